//! Delivering notifications from the outbox, with retries.
//!
//! [`Sender::deliver_due`] reads the deliveries due now from the store's
//! `alert_deliveries` outbox, sends each to its channel, and writes the new
//! state back: `sent` on a 2xx answer; otherwise another attempt after an
//! exponential backoff with jitter (`base · 2^(attempts − 1)`, capped, times
//! a factor in [0.5, 1)), or `failed` once `max_attempts` is reached. Because
//! the state lives in the store, a restarted sender carries on where the old
//! one stopped: a notification is sent at most once per channel under normal
//! operation, and at least once with the same idempotency key
//! (`X-Tidewatch-Alert-Id`) if the process dies between sending and
//! recording. Channels are served concurrently and a channel stops for the
//! pass at its first failure, so one failing channel does not hold up the
//! others.
//!
//! Channels: generic webhooks and Slack over HTTP or HTTPS (rustls, Mozilla
//! roots plus an optional CA per channel), email over SMTP
//! ([`crate::email`]), the retrain endpoint and the bus ([`Bus`], Kafka in
//! the service) for retrain requests ([`crate::retrain`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use lettre::{AsyncSmtpTransport, Tokio1Executor};
use rustls::pki_types::{pem::PemObject, CertificateDer};
use store::{Delivery, DeliveryState, Store};

use crate::email::EmailSettings;
use crate::lifecycle::Alert;
use crate::payload::{
    retrain_event, sign, slack_message, webhook_body, SIGNATURE_HEADER, TIMESTAMP_HEADER,
};
use crate::Error;

/// Header carrying the notification's idempotency key.
pub const ALERT_ID_HEADER: &str = "X-Tidewatch-Alert-Id";
/// Content type of CloudEvents in structured mode.
pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json; charset=utf-8";

/// An HTTP endpoint that receives signed requests.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// URL (http:// or https://).
    pub url: String,
    /// HMAC key for `X-Tidewatch-Signature`; unsigned without one.
    pub secret: Option<Vec<u8>>,
    /// An extra CA (PEM) to trust for this endpoint.
    pub ca_pem: Option<Vec<u8>>,
}

/// What a channel is.
#[derive(Debug, Clone, PartialEq)]
pub enum ChannelKind {
    /// A generic webhook: the alert as JSON.
    Webhook(Endpoint),
    /// A Slack incoming webhook (Block Kit message).
    Slack {
        /// Incoming-webhook URL.
        url: String,
        /// Link put in the message.
        dashboard_url: Option<String>,
    },
    /// Email over SMTP.
    Email(Box<EmailSettings>),
    /// The retrain endpoint: the request's CloudEvent.
    RetrainWebhook(Endpoint),
    /// The request's CloudEvent published on the bus.
    Bus {
        /// Kafka topic.
        topic: String,
    },
}

/// A named channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Channel {
    /// Name referenced by rules.
    pub name: String,
    /// Kind and address.
    pub kind: ChannelKind,
}

impl Channel {
    /// Validates a channel; `key` is its place in the config.
    pub fn new(name: String, kind: ChannelKind, key: &str) -> Result<Self, Error> {
        let invalid = |field: &str, message: String| Error::InvalidRule {
            key: format!("{key}.{field}"),
            message,
        };
        match &kind {
            ChannelKind::Webhook(endpoint) | ChannelKind::RetrainWebhook(endpoint) => {
                check_url(&endpoint.url).map_err(|m| invalid("url", m))?;
                if let Some(pem) = &endpoint.ca_pem {
                    parse_pem_certificates(pem).map_err(|m| invalid("ca_file", m))?;
                }
            }
            ChannelKind::Slack { url, .. } => check_url(url).map_err(|m| invalid("url", m))?,
            ChannelKind::Email(settings) => settings.validate(key)?,
            ChannelKind::Bus { topic } => {
                if topic.trim().is_empty() {
                    return Err(invalid("topic", "is empty".into()));
                }
            }
        }
        Ok(Self { name, kind })
    }
}

fn check_url(url: &str) -> Result<(), String> {
    let parsed: hyper::Uri = url.parse().map_err(|_| format!("`{url}` is not a URL"))?;
    match parsed.scheme_str() {
        Some("http" | "https") if parsed.host().is_some() => Ok(()),
        _ => Err(format!("`{url}` is not an http:// or https:// URL")),
    }
}

/// Every certificate in a PEM file (at least one).
fn parse_pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("not a PEM certificate: {error}"))?;
    if certificates.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(certificates)
}

/// Where bus events go (a Kafka producer in the service; anything in tests).
pub trait Bus: Send + Sync {
    /// Publishes `payload` to `topic` under `key` with `headers`; `Err`
    /// holds the reason to record.
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        key: &'a str,
        payload: Vec<u8>,
        headers: Vec<(&'static str, String)>,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;
}

/// Retry policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts before a delivery is marked failed.
    pub max_attempts: u32,
    /// First backoff, ms.
    pub base_backoff_ms: u64,
    /// Largest backoff, ms.
    pub max_backoff_ms: u64,
    /// Time allowed for one request.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            base_backoff_ms: 1_000,
            max_backoff_ms: 300_000,
            timeout: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// Delay before attempt `attempts + 1`, with a deterministic jitter in
    /// [0.5, 1) derived from `seed` (so two senders agree, and tests can check).
    pub fn backoff_ms(&self, attempts: u32, seed: u64) -> u64 {
        let exponential = self
            .base_backoff_ms
            .saturating_mul(1u64 << attempts.saturating_sub(1).min(32));
        let capped = exponential.min(self.max_backoff_ms);
        let jitter =
            0.5 + (splitmix(seed ^ u64::from(attempts)) >> 11) as f64 / (1u64 << 53) as f64 / 2.0;
        (capped as f64 * jitter) as u64
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Outcomes of one pass, in total or for one channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryCounts {
    /// Delivered.
    pub sent: u32,
    /// Failed this time, to be retried.
    pub retried: u32,
    /// Failed for good.
    pub failed: u32,
}

/// The idempotency key of a notification (`X-Tidewatch-Alert-Id`, the
/// Message-ID, a retrain request's id): `{alert id}:{status}:{window start}`.
pub fn idempotency_key(alert_id: &str, status: &str, window_start: i64) -> String {
    format!("{alert_id}:{status}:{window_start}")
}

/// (alert id, status, window start): one notification.
type NotificationKey = (String, String, i64);

fn notification_key(delivery: &Delivery) -> NotificationKey {
    (
        delivery.alert_id.clone(),
        delivery.status.clone(),
        delivery.window_start,
    )
}

/// What one pass of [`Sender::deliver_due`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Delivered.
    pub sent: u32,
    /// Failed this time, to be retried.
    pub retried: u32,
    /// Failed for good.
    pub failed: u32,
    /// The same per channel (channels with an attempt only).
    pub channels: BTreeMap<String, DeliveryCounts>,
}

/// Sends due notifications. See the module docs.
pub struct Sender {
    store: Store,
    channels: BTreeMap<String, Channel>,
    policy: RetryPolicy,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    smtp: BTreeMap<String, AsyncSmtpTransport<Tokio1Executor>>,
    bus: Option<Arc<dyn Bus>>,
}

impl Sender {
    /// A sender over `store` for `channels`. HTTPS endpoints are checked
    /// against the Mozilla roots plus every channel's extra CA.
    pub fn new(store: Store, channels: Vec<Channel>, policy: RetryPolicy) -> Result<Self, Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let mut smtp = BTreeMap::new();
        for channel in &channels {
            match &channel.kind {
                ChannelKind::Webhook(Endpoint {
                    ca_pem: Some(pem), ..
                })
                | ChannelKind::RetrainWebhook(Endpoint {
                    ca_pem: Some(pem), ..
                }) => {
                    for certificate in parse_pem_certificates(pem).map_err(Error::Setup)? {
                        roots
                            .add(certificate)
                            .map_err(|e| Error::Setup(format!("{}: {e}", channel.name)))?;
                    }
                }
                ChannelKind::Email(settings) => {
                    let transport = settings.transport(policy.timeout).map_err(Error::Setup)?;
                    smtp.insert(channel.name.clone(), transport);
                }
                _ => {}
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            store,
            channels: channels
                .into_iter()
                .map(|channel| (channel.name.clone(), channel))
                .collect(),
            policy,
            client: Client::builder(TokioExecutor::new()).build(connector),
            smtp,
            bus: None,
        })
    }

    /// Publishes bus events (retrain requests) through `bus`.
    pub fn with_bus(mut self, bus: Arc<dyn Bus>) -> Self {
        self.bus = Some(bus);
        self
    }

    /// Sends every delivery due at `now` (ms) and records the outcomes.
    ///
    /// Channels are served concurrently, each in order; a channel stops for
    /// this pass at its first failure (the rest stay due, unattempted), so a
    /// channel that times out costs one timeout per pass and holds up no
    /// other channel.
    pub async fn deliver_due(&self, now: u64) -> Result<DeliveryReport, Error> {
        let mut by_channel: BTreeMap<String, Vec<Delivery>> = BTreeMap::new();
        // Each notification is read once, however many channels it goes to.
        let mut notifications: BTreeMap<NotificationKey, Result<(Alert, u64), String>> =
            BTreeMap::new();
        for delivery in self.store.due_deliveries(now, 500).await? {
            if let std::collections::btree_map::Entry::Vacant(entry) =
                notifications.entry(notification_key(&delivery))
            {
                entry.insert(self.notification(&delivery).await);
            }
            by_channel
                .entry(delivery.channel.clone())
                .or_default()
                .push(delivery);
        }
        let notifications = &notifications;
        let passes = by_channel.into_values().map(|deliveries| async move {
            let mut outcomes = Vec::with_capacity(deliveries.len());
            for delivery in deliveries {
                let notification = &notifications[&notification_key(&delivery)];
                let outcome = self.attempt(&delivery, notification, now).await;
                let failed = outcome.is_err();
                outcomes.push((delivery, outcome));
                if failed {
                    break;
                }
            }
            outcomes
        });
        let outcomes = futures_util::future::join_all(passes).await;
        let mut report = DeliveryReport::default();
        for (delivery, outcome) in outcomes.into_iter().flatten() {
            let attempts = delivery.attempts + 1;
            let seed = crate::lifecycle::fnv1a(&[&delivery.alert_id, &delivery.channel]);
            let counts = report.channels.entry(delivery.channel.clone()).or_default();
            let next = match outcome {
                Ok(()) => {
                    report.sent += 1;
                    counts.sent += 1;
                    Delivery {
                        state: DeliveryState::Sent,
                        attempts,
                        last_error: String::new(),
                        updated_at: now,
                        ..delivery
                    }
                }
                Err(error) if attempts >= self.policy.max_attempts => {
                    report.failed += 1;
                    counts.failed += 1;
                    Delivery {
                        state: DeliveryState::Failed,
                        attempts,
                        last_error: error,
                        updated_at: now,
                        ..delivery
                    }
                }
                Err(error) => {
                    report.retried += 1;
                    counts.retried += 1;
                    Delivery {
                        attempts,
                        next_attempt_at: now + self.policy.backoff_ms(attempts, seed),
                        last_error: error,
                        updated_at: now,
                        ..delivery
                    }
                }
            };
            self.store.update_delivery(next).await?;
        }
        Ok(report)
    }

    /// The recorded notification a delivery sends and when it was recorded;
    /// `Err` holds the reason to record against the delivery.
    async fn notification(&self, delivery: &Delivery) -> Result<(Alert, u64), String> {
        let record = self
            .store
            .alert_notification(&delivery.alert_id, &delivery.status, delivery.window_start)
            .await
            .map_err(|error| error.to_string())?
            .ok_or_else(|| "notification not found in the alerts table".to_owned())?;
        let alert: Alert = serde_json::from_str(&record.payload)
            .map_err(|error| format!("stored payload: {error}"))?;
        Ok((alert, record.created_at))
    }

    /// One attempt; `Err` holds the reason to record.
    async fn attempt(
        &self,
        delivery: &Delivery,
        notification: &Result<(Alert, u64), String>,
        now: u64,
    ) -> Result<(), String> {
        let channel = self
            .channels
            .get(&delivery.channel)
            .ok_or_else(|| format!("channel `{}` is not configured", delivery.channel))?;
        let (alert, recorded_at) = notification.as_ref().map_err(Clone::clone)?;
        let key = idempotency_key(&delivery.alert_id, &delivery.status, delivery.window_start);
        self.send(channel, alert, &key, now, *recorded_at).await
    }

    /// Sends a synthetic alert to channel `name` (for `tidewatch alerts
    /// test-channel`); nothing is recorded.
    pub async fn send_test(&self, name: &str, now: u64) -> Result<(), String> {
        let channel = self
            .channels
            .get(name)
            .ok_or_else(|| format!("no channel named `{name}`"))?;
        let alert = Alert {
            id: "tw-test".into(),
            rule: "test_channel".into(),
            model: "tidewatch".into(),
            model_version: "test".into(),
            segment: "all".into(),
            severity: crate::rules::Severity::Info,
            status: crate::lifecycle::AlertStatus::Firing,
            repeat: false,
            window_start: now as i64,
            window_end: now as i64,
            findings: Vec::new(),
            summary: format!("[info] test message from Tidewatch to channel `{name}`"),
            channels: vec![name.to_owned()],
            retrain: false,
            onset: now as i64,
        };
        self.send(channel, &alert, &format!("tw-test:{now}"), now, now)
            .await
    }

    /// Sends `alert` to `channel` with idempotency key `key`; `recorded_at`
    /// (ms) is when the notification was recorded, the `time` of a retrain
    /// event, so every attempt and channel carries the same document.
    async fn send(
        &self,
        channel: &Channel,
        alert: &Alert,
        key: &str,
        now: u64,
        recorded_at: u64,
    ) -> Result<(), String> {
        let signed = |secret: &Option<Vec<u8>>, body: &[u8]| {
            let timestamp = now / 1000;
            secret
                .as_ref()
                .map(|secret| (timestamp, sign(secret, timestamp, body)))
        };
        match &channel.kind {
            ChannelKind::Webhook(endpoint) => {
                let body = webhook_body(alert);
                let signature = signed(&endpoint.secret, &body);
                self.post(&endpoint.url, "application/json", body, key, signature)
                    .await
            }
            ChannelKind::Slack { url, dashboard_url } => {
                let body = serde_json::to_vec(&slack_message(alert, dashboard_url.as_deref()))
                    .map_err(|e| e.to_string())?;
                self.post(url, "application/json", body, key, None).await
            }
            ChannelKind::RetrainWebhook(endpoint) => {
                let body = serde_json::to_vec(&retrain_event(alert, key, recorded_at))
                    .map_err(|e| e.to_string())?;
                let signature = signed(&endpoint.secret, &body);
                self.post(&endpoint.url, CLOUDEVENTS_JSON, body, key, signature)
                    .await
            }
            ChannelKind::Email(settings) => {
                let transport = self
                    .smtp
                    .get(&channel.name)
                    .ok_or("no SMTP transport for this channel")?;
                let message = settings.message(alert, key)?;
                tokio::time::timeout(self.policy.timeout, crate::email::send(transport, message))
                    .await
                    .map_err(|_| "timed out".to_owned())?
            }
            ChannelKind::Bus { topic } => {
                let bus = self
                    .bus
                    .as_ref()
                    .ok_or("no bus is configured (retrain events need [kafka])")?;
                let body = serde_json::to_vec(&retrain_event(alert, key, recorded_at))
                    .map_err(|e| e.to_string())?;
                let headers = vec![
                    ("content-type", CLOUDEVENTS_JSON.to_owned()),
                    (ALERT_ID_HEADER, key.to_owned()),
                ];
                tokio::time::timeout(
                    self.policy.timeout,
                    bus.publish(topic, &alert.model, body, headers),
                )
                .await
                .map_err(|_| "timed out".to_owned())?
            }
        }
    }

    /// POSTs `body` to `url`; `Err` holds the reason to record.
    async fn post(
        &self,
        url: &str,
        content_type: &str,
        body: Vec<u8>,
        key: &str,
        signature: Option<(u64, String)>,
    ) -> Result<(), String> {
        let mut request = hyper::Request::post(url)
            .header("content-type", content_type)
            .header(ALERT_ID_HEADER, key);
        if let Some((timestamp, signature)) = signature {
            request = request
                .header(TIMESTAMP_HEADER, timestamp.to_string())
                .header(SIGNATURE_HEADER, signature);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|error| error.to_string())?;
        let response = tokio::time::timeout(self.policy.timeout, self.client.request(request))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|error| format!("request failed: {}", error_chain(&error)))?;
        let status = response.status();
        // Drain the body so the connection can be reused.
        let _ = response.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {status}"))
        }
    }
}

/// An error and its sources, so a TLS failure says why.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_is_capped_and_jittered_into_the_upper_half() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base_backoff_ms: 1_000,
            max_backoff_ms: 60_000,
            timeout: Duration::from_secs(1),
        };
        for attempts in 1..12u32 {
            let full = (1_000u64 << (attempts - 1)).min(60_000);
            let delay = policy.backoff_ms(attempts, 42);
            assert!(
                delay >= full / 2 && delay < full,
                "attempt {attempts}: {delay} for {full}"
            );
        }
        assert_ne!(
            policy.backoff_ms(3, 1),
            policy.backoff_ms(3, 2),
            "jitter spreads senders"
        );
    }

    #[test]
    fn malformed_urls_are_refused_naming_the_key() {
        let bad = Channel::new(
            "w".into(),
            ChannelKind::Webhook(Endpoint {
                url: "ftp://x".into(),
                secret: None,
                ca_pem: None,
            }),
            "alerts.channels[1]",
        );
        assert!(bad
            .unwrap_err()
            .to_string()
            .contains("`alerts.channels[1].url`"));
        let bad_ca = Channel::new(
            "w".into(),
            ChannelKind::RetrainWebhook(Endpoint {
                url: "https://ml.example/retrain".into(),
                secret: None,
                ca_pem: Some(b"nothing here".to_vec()),
            }),
            "alerts.retrain",
        );
        assert!(bad_ca
            .unwrap_err()
            .to_string()
            .contains("`alerts.retrain.ca_file`"));
        for url in [
            "http://127.0.0.1:9/hook",
            "https://hooks.slack.com/services/x",
        ] {
            assert!(Channel::new(
                "s".into(),
                ChannelKind::Slack {
                    url: url.into(),
                    dashboard_url: None
                },
                "k"
            )
            .is_ok());
        }
    }
}
