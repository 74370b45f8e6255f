//! The inference log: every answer (champion, canary, shadow, pinned)
//! becomes a `tidewatch.prediction.v1` event on the predictions topic,
//! keyed by request id.
//!
//! ```text
//! handler ──record()──▶ bounded channel (capacity C) ──▶ forward() ──▶ librdkafka queue (≤ C) ──▶ broker
//!            full: drop, count buffer_full                 queue full: wait       undelivered after the
//!                                                                                   message timeout: drop,
//!                                                                                   count bus_error
//! ```
//!
//! Logging never blocks inference: [`InferenceLog::record`] encodes the
//! event and offers it to the channel without waiting; when the bus is slow
//! or down, events wait first in librdkafka's queue and then in the
//! channel, at most `2 × C` events in all, and beyond that are dropped and
//! counted (`tidewatch_serving_log_dropped_total{reason="buffer_full"}`).
//! An event the broker does not acknowledge within the producer's message
//! timeout is dropped and counted as `bus_error`. Delivery is at least once
//! (an idempotent producer where the broker supports it keeps retries from
//! writing twice); on shutdown what is buffered is sent within a deadline.

use std::future::Future;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::features::{FeatureBatch, FeatureValue};
use crate::outputs::Prediction;
use crate::telemetry::Telemetry;

/// One encoded event.
#[derive(Debug)]
pub struct LoggedEvent {
    /// The request id (the message key).
    pub key: String,
    /// The JSON event.
    pub payload: Vec<u8>,
}

/// One row's answer, as logged.
pub struct PredictionRecord<'a> {
    pub model: &'a str,
    pub version: &'a str,
    pub prediction_id: &'a str,
    pub timestamp_ms: i64,
    pub features: &'a FeatureBatch,
    pub row: usize,
    /// The prediction, or the error that prevented it.
    pub outcome: Result<&'a Prediction, &'a str>,
    /// Serving latency, when known.
    pub latency_ms: Option<f64>,
}

impl Serialize for PredictionRecord<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Features<'a>(&'a FeatureBatch, usize);
        impl Serialize for Features<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut map = serializer.serialize_map(Some(self.0.columns().len()))?;
                for (name, value) in self.0.row(self.1) {
                    match value {
                        FeatureValue::Number(number) => map.serialize_entry(name, &number)?,
                        FeatureValue::Text(text) => map.serialize_entry(name, text)?,
                        FeatureValue::Bool(flag) => map.serialize_entry(name, &flag)?,
                    }
                }
                map.end()
            }
        }
        struct Output<'a>(&'a Prediction);
        impl Serialize for Output<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut map = serializer.serialize_map(None)?;
                if let Some(score) = self.0.score {
                    map.serialize_entry("score", &score)?;
                }
                if let Some(class) = &self.0.class {
                    map.serialize_entry("class", class)?;
                }
                if !self.0.probabilities.is_empty() {
                    struct Shares<'a>(&'a [(String, f64)]);
                    impl Serialize for Shares<'_> {
                        fn serialize<S: Serializer>(
                            &self,
                            serializer: S,
                        ) -> Result<S::Ok, S::Error> {
                            let mut map = serializer.serialize_map(Some(self.0.len()))?;
                            for (class, probability) in self.0 {
                                map.serialize_entry(class, probability)?;
                            }
                            map.end()
                        }
                    }
                    map.serialize_entry("probabilities", &Shares(&self.0.probabilities))?;
                }
                map.end()
            }
        }
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("schema", events::EventKind::Prediction.schema_id())?;
        map.serialize_entry("model", self.model)?;
        map.serialize_entry("model_version", self.version)?;
        map.serialize_entry("prediction_id", self.prediction_id)?;
        map.serialize_entry("timestamp", &self.timestamp_ms)?;
        map.serialize_entry("features", &Features(self.features, self.row))?;
        match self.outcome {
            Ok(prediction) => map.serialize_entry("prediction", &Output(prediction))?,
            Err(error) => map.serialize_entry("error", error)?,
        }
        if let Some(latency_ms) = self.latency_ms {
            map.serialize_entry("latency_ms", &latency_ms)?;
        }
        map.end()
    }
}

/// The handlers' end of the log. Cheap to clone.
#[derive(Debug, Clone)]
pub struct InferenceLog {
    sender: mpsc::Sender<LoggedEvent>,
    telemetry: Telemetry,
}

impl InferenceLog {
    /// A log whose buffer holds `capacity` events, and its other end.
    pub fn bounded(capacity: usize, telemetry: Telemetry) -> (Self, mpsc::Receiver<LoggedEvent>) {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        (Self { sender, telemetry }, receiver)
    }

    /// Encodes `record` and offers it to the buffer; never waits.
    pub fn record(&self, record: &PredictionRecord<'_>) {
        let payload = match serde_json::to_vec(record) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::warn!(%error, "a prediction event could not be encoded");
                self.telemetry.dropped("encoding");
                return;
            }
        };
        let event = LoggedEvent {
            key: record.prediction_id.to_owned(),
            payload,
        };
        match self.sender.try_send(event) {
            Ok(()) => self.telemetry.logged(),
            Err(mpsc::error::TrySendError::Full(_)) => self.telemetry.dropped("buffer_full"),
            Err(mpsc::error::TrySendError::Closed(_)) => self.telemetry.dropped("bus_error"),
        }
    }
}

/// The prediction id of row `row` of a request of `rows` rows with id `id`:
/// the id itself for one row, `{id}/{row}` otherwise.
pub fn prediction_id(id: &str, rows: usize, row: usize) -> String {
    if rows == 1 {
        id.to_owned()
    } else {
        format!("{id}/{row}")
    }
}

/// The wall clock, ms since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One exchange read by an adapter (KServe, Seldon): its request's and
/// response's times, when known.
pub struct Exchange<'a> {
    pub model: &'a str,
    pub version: &'a str,
    pub id: &'a str,
    pub features: &'a FeatureBatch,
    pub predictions: &'a [Prediction],
    pub request_ms: Option<i64>,
    pub response_ms: Option<i64>,
}

impl InferenceLog {
    /// Logs every row of `exchange`: the event time is the request's (else
    /// the response's, else now), the latency the time between them.
    pub fn record_exchange(&self, exchange: &Exchange<'_>) {
        let timestamp_ms = exchange
            .request_ms
            .or(exchange.response_ms)
            .unwrap_or_else(now_ms);
        let latency_ms = match (exchange.request_ms, exchange.response_ms) {
            (Some(sent), Some(answered)) if answered >= sent => Some((answered - sent) as f64),
            _ => None,
        };
        let rows = exchange.features.rows();
        for (row, prediction) in exchange.predictions.iter().enumerate() {
            self.record(&PredictionRecord {
                model: exchange.model,
                version: exchange.version,
                prediction_id: &prediction_id(exchange.id, rows, row),
                timestamp_ms,
                features: exchange.features,
                row,
                outcome: Ok(prediction),
                latency_ms,
            });
        }
    }
}

/// Test support: checks that `events` holds exactly the prediction events
/// of an adapter fixture's `expected.json`.
#[cfg(test)]
pub(crate) fn assert_logged_as_expected(
    events: &mut mpsc::Receiver<LoggedEvent>,
    expected: &[serde_json::Value],
) {
    for want in expected {
        let event = events
            .try_recv()
            .expect("one event per expected prediction");
        let got = events::decode(&event.payload, events::EventKind::Prediction).unwrap();
        assert_eq!(got.model, want["model"].as_str().unwrap());
        assert_eq!(got.model_version, want["model_version"].as_str().unwrap());
        assert_eq!(got.prediction_id.as_deref(), want["prediction_id"].as_str());
        assert_eq!(event.key, want["prediction_id"].as_str().unwrap());
        assert_eq!(got.timestamp_ms, want["timestamp"].as_i64().unwrap());
        assert_eq!(got.latency_ms, want["latency_ms"].as_f64());
        let prediction = got.prediction.unwrap();
        assert_eq!(prediction.score, want["score"].as_f64());
        assert_eq!(prediction.class.as_deref(), want["class"].as_str());
        for (name, value) in &got.features {
            let events::FeatureValue::Number(number) = value else {
                panic!("{value:?}")
            };
            assert_eq!(
                Some(*number),
                want["features"][name.as_ref()].as_f64(),
                "{name}"
            );
        }
    }
    assert!(events.try_recv().is_err(), "nothing else is logged");
}

/// How long buffered events may take to reach the broker at shutdown.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Sends the log's events to `topic` until `shutdown`, then what is
/// buffered within [`DRAIN_DEADLINE`] (what is left then is dropped and
/// counted). The producer's own queue should be bounded like the channel
/// (`queue.buffering.max.messages`).
pub async fn forward(
    mut events: mpsc::Receiver<LoggedEvent>,
    producer: FutureProducer,
    topic: String,
    telemetry: Telemetry,
    shutdown: impl Future<Output = ()>,
) {
    let mut pending = FuturesUnordered::new();
    tokio::pin!(shutdown);
    let mut deadline: Option<tokio::time::Instant> = None;
    let expired = |deadline: Option<tokio::time::Instant>| async move {
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    };
    'events: loop {
        let event = tokio::select! {
            biased;
            Some(delivered) = pending.next(), if !pending.is_empty() => {
                count(&telemetry, delivered);
                continue;
            }
            () = &mut shutdown, if deadline.is_none() => {
                deadline = Some(tokio::time::Instant::now() + DRAIN_DEADLINE);
                events.close();
                continue;
            }
            () = expired(deadline) => break 'events,
            event = events.recv() => event,
        };
        let Some(event) = event else { break };
        // Wait for room in librdkafka's queue, counting deliveries meanwhile.
        loop {
            let record = FutureRecord::to(&topic)
                .key(&event.key)
                .payload(&event.payload);
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::select! {
                        biased;
                        Some(delivered) = pending.next(), if !pending.is_empty() => count(&telemetry, delivered),
                        () = expired(deadline) => {
                            telemetry.dropped("bus_error");
                            break 'events;
                        }
                        () = tokio::time::sleep(Duration::from_millis(5)) => {}
                    }
                }
                Err((error, _)) => {
                    tracing::warn!(%error, "a prediction event could not be queued");
                    telemetry.dropped("bus_error");
                    break;
                }
            }
        }
    }
    // What the deadline cut off is dropped and counted.
    events.close();
    while events.try_recv().is_ok() {
        telemetry.dropped("bus_error");
    }
    let until = deadline.unwrap_or_else(|| tokio::time::Instant::now() + DRAIN_DEADLINE);
    loop {
        tokio::select! {
            delivered = pending.next() => match delivered {
                Some(delivered) => count(&telemetry, delivered),
                None => break,
            },
            () = tokio::time::sleep_until(until) => {
                for _ in 0..pending.len() {
                    telemetry.dropped("bus_error");
                }
                break;
            }
        }
    }
}

fn count<E>(
    telemetry: &Telemetry,
    delivered: Result<rdkafka::producer::future_producer::OwnedDeliveryResult, E>,
) {
    match delivered {
        Ok(Ok(_)) => telemetry.delivered(),
        Ok(Err((error, _))) => {
            tracing::debug!(%error, "a prediction event was not delivered");
            telemetry.dropped("bus_error");
        }
        Err(_) => telemetry.dropped("bus_error"),
    }
}
