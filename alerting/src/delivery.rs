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
//! ## Order
//! One alert's notifications reach a channel in the order they were raised
//! (by window, firing before resolved): a notification waits while an
//! earlier one of the same alert to the same channel is still pending, even
//! if its own attempt is due. So `resolved` never overtakes the `firing` it
//! resolves, however long the channel was down. (The order is decided over
//! the oldest [`PENDING_SCAN`] pending deliveries.)
//!
//! ## Failures
//! Every failure is a [`SendError`]: retryable (timeouts, refused
//! connections, HTTP 408, 425, 429 and 5xx, transient SMTP replies) or not
//! (other HTTP 4xx such as 400, 401, 403, 404; permanent SMTP replies such
//! as a rejected recipient or bad credentials; a channel that is not
//! configured). A retryable failure is tried again after the backoff, or
//! after the server's `Retry-After` when it is longer (up to
//! [`MAX_RETRY_AFTER_MS`]); one that is not retryable, or the last
//! allowed attempt, ends the delivery as `failed` with `last_error` saying
//! `gave up: …` and why.
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
use crate::notification::{idempotency_key, NotificationKey, NotificationStatus, SendError};
use crate::payload::{
    retrain_event, sign, slack_message, webhook_body, SIGNATURE_HEADER, TIMESTAMP_HEADER,
};
use crate::Error;

/// The longest `Retry-After` honoured (one hour).
pub const MAX_RETRY_AFTER_MS: u64 = 3_600_000;

/// Pending deliveries read per pass to decide the order of each alert's
/// notifications.
pub const PENDING_SCAN: u64 = 5_000;

/// A `Retry-After` header: delay-seconds or an HTTP date.
fn retry_after(headers: &hyper::HeaderMap, now_ms: u64) -> Option<Duration> {
    let value = headers
        .get(hyper::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let at_ms = u64::try_from(at.timestamp_millis()).ok()?;
    Some(Duration::from_millis(at_ms.saturating_sub(now_ms)))
}

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
        let invalid = |field: &str, message: String| Error::InvalidSetting {
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

/// Publishes the CloudEvent `event` (structured JSON) to `topic` under
/// `key`, trying again every `retry_after` until the bus takes it: for
/// events whose cause is already recorded (an acknowledgement, a promotion
/// decision), which must not be dropped while the broker is away. Drop the
/// future to give up (shutdown).
pub async fn publish_until_sent(
    bus: &dyn Bus,
    topic: &str,
    key: &str,
    event: &serde_json::Value,
    retry_after: Duration,
) {
    let payload = event.to_string().into_bytes();
    loop {
        let headers = vec![("content-type", CLOUDEVENTS_JSON.to_owned())];
        match bus.publish(topic, key, payload.clone(), headers).await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(%error, topic, id = %event["id"], "event not published yet; retrying");
                tokio::time::sleep(retry_after).await;
            }
        }
    }
}

/// Retry policy of deliveries (`[alerts.delivery]`). Built by
/// [`RetryPolicy::new`], which checks it, or [`RetryPolicy::default`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts before a delivery is marked failed.
    pub(crate) max_attempts: u32,
    /// First backoff, ms.
    pub(crate) base_backoff_ms: u64,
    /// Largest backoff, ms.
    pub(crate) max_backoff_ms: u64,
    /// Time allowed for one request.
    pub(crate) timeout: Duration,
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

/// Why [`RetryPolicy::new`] refused its arguments: the setting at fault
/// (as named under `[alerts.delivery]`) and the rule it breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidPolicy {
    /// `max_attempts`, `initial_backoff`, `max_backoff` or `timeout`.
    pub setting: &'static str,
    /// The rule.
    pub rule: &'static str,
}

impl RetryPolicy {
    /// A policy of at most `max_attempts` attempts, waiting
    /// `initial_backoff` before the second and doubling (with jitter) up to
    /// `max_backoff`, each request given `timeout`.
    pub fn new(
        max_attempts: u32,
        initial_backoff: Duration,
        max_backoff: Duration,
        timeout: Duration,
    ) -> Result<Self, InvalidPolicy> {
        let invalid = |setting, rule| Err(InvalidPolicy { setting, rule });
        if max_attempts == 0 {
            return invalid("max_attempts", "must be at least 1");
        }
        if initial_backoff.is_zero() {
            return invalid("initial_backoff", "must be positive");
        }
        if max_backoff < initial_backoff {
            return invalid("max_backoff", "must be at least `initial_backoff`");
        }
        if timeout.is_zero() {
            return invalid("timeout", "must be positive");
        }
        Ok(Self {
            max_attempts,
            base_backoff_ms: initial_backoff.as_millis() as u64,
            max_backoff_ms: max_backoff.as_millis() as u64,
            timeout,
        })
    }

    /// Attempts before a delivery is marked failed.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Time allowed for one request.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

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

fn notification_key(delivery: &Delivery) -> NotificationKey {
    (
        delivery.alert_id.clone(),
        delivery.status,
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
        let mut notifications: BTreeMap<NotificationKey, Result<(Alert, u64), SendError>> =
            BTreeMap::new();
        for delivery in due_in_order(
            self.store
                .due_deliveries(i64::MAX as u64, PENDING_SCAN)
                .await?,
            now,
        ) {
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
                Err(error) if !error.is_retryable() || attempts >= self.policy.max_attempts => {
                    report.failed += 1;
                    counts.failed += 1;
                    let why = if error.is_retryable() {
                        format!("gave up after {attempts} attempts: {error}")
                    } else {
                        format!("gave up: not retryable: {error}")
                    };
                    Delivery {
                        state: DeliveryState::Failed,
                        attempts,
                        last_error: why,
                        updated_at: now,
                        ..delivery
                    }
                }
                Err(error) => {
                    report.retried += 1;
                    counts.retried += 1;
                    let backoff = self.policy.backoff_ms(attempts, seed);
                    let asked = match &error {
                        SendError::Retryable {
                            retry_after: Some(delay),
                            ..
                        } => (delay.as_millis() as u64).min(MAX_RETRY_AFTER_MS),
                        _ => 0,
                    };
                    Delivery {
                        attempts,
                        next_attempt_at: now + backoff.max(asked),
                        last_error: error.to_string(),
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
    async fn notification(&self, delivery: &Delivery) -> Result<(Alert, u64), SendError> {
        let record = self
            .store
            .alert_notification(&delivery.alert_id, delivery.status, delivery.window_start)
            .await
            .map_err(|error| SendError::retryable(error.to_string()))?
            .ok_or_else(|| {
                SendError::Permanent("notification not found in the alerts table".to_owned())
            })?;
        let alert: Alert = serde_json::from_str(&record.payload)
            .map_err(|error| SendError::Permanent(format!("stored payload: {error}")))?;
        Ok((alert, record.created_at))
    }

    /// One attempt; `Err` holds the reason to record.
    async fn attempt(
        &self,
        delivery: &Delivery,
        notification: &Result<(Alert, u64), SendError>,
        now: u64,
    ) -> Result<(), SendError> {
        let channel = self.channels.get(&delivery.channel).ok_or_else(|| {
            SendError::Permanent(format!("channel `{}` is not configured", delivery.channel))
        })?;
        let (alert, recorded_at) = notification.as_ref().map_err(Clone::clone)?;
        let key = idempotency_key(&delivery.alert_id, delivery.status, delivery.window_start);
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
            .map_err(|error| error.to_string())
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
    ) -> Result<(), SendError> {
        let encoding = |error: serde_json::Error| SendError::Permanent(error.to_string());
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
                self.post(&endpoint.url, "application/json", body, key, signature, now)
                    .await
            }
            ChannelKind::Slack { url, dashboard_url } => {
                let body = serde_json::to_vec(&slack_message(alert, dashboard_url.as_deref()))
                    .map_err(encoding)?;
                self.post(url, "application/json", body, key, None, now)
                    .await
            }
            ChannelKind::RetrainWebhook(endpoint) => {
                let body = serde_json::to_vec(&retrain_event(alert, key, recorded_at))
                    .map_err(encoding)?;
                let signature = signed(&endpoint.secret, &body);
                self.post(&endpoint.url, CLOUDEVENTS_JSON, body, key, signature, now)
                    .await
            }
            ChannelKind::Email(settings) => {
                let transport = self.smtp.get(&channel.name).ok_or_else(|| {
                    SendError::Permanent("no SMTP transport for this channel".into())
                })?;
                let message = settings.message(alert, key).map_err(SendError::Permanent)?;
                tokio::time::timeout(self.policy.timeout, crate::email::send(transport, message))
                    .await
                    .map_err(|_| SendError::retryable("timed out"))?
            }
            ChannelKind::Bus { topic } => {
                let bus = self.bus.as_ref().ok_or_else(|| {
                    SendError::Permanent(
                        "no bus is configured (retrain events need [kafka])".into(),
                    )
                })?;
                let body = serde_json::to_vec(&retrain_event(alert, key, recorded_at))
                    .map_err(encoding)?;
                let headers = vec![
                    ("content-type", CLOUDEVENTS_JSON.to_owned()),
                    (ALERT_ID_HEADER, key.to_owned()),
                ];
                tokio::time::timeout(
                    self.policy.timeout,
                    bus.publish(topic, &alert.model, body, headers),
                )
                .await
                .map_err(|_| SendError::retryable("timed out"))?
                .map_err(SendError::retryable)
            }
        }
    }

    /// POSTs `body` to `url` at `now` (ms, the pass's clock, which an
    /// HTTP-date `Retry-After` is measured from); `Err` holds the reason to
    /// record.
    async fn post(
        &self,
        url: &str,
        content_type: &str,
        body: Vec<u8>,
        key: &str,
        signature: Option<(u64, String)>,
        now: u64,
    ) -> Result<(), SendError> {
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
            .map_err(|error| SendError::Permanent(error.to_string()))?;
        let response = tokio::time::timeout(self.policy.timeout, self.client.request(request))
            .await
            .map_err(|_| SendError::retryable("timed out"))?
            .map_err(|error| {
                SendError::retryable(format!("request failed: {}", error_chain(&error)))
            })?;
        let status = response.status();
        let asked = retry_after(response.headers(), now);
        // Drain the body so the connection can be reused.
        let _ = response.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(SendError::from_status(status, asked))
        }
    }
}

/// Rank of a notification status within one window: firing (and its
/// retrain request) before resolved.
fn status_rank(status: NotificationStatus) -> u8 {
    u8::from(status == NotificationStatus::Resolved)
}

/// Of `pending` (every pending delivery), those that may be attempted at
/// `now`: per channel and alert, the notifications in the order they were
/// raised, up to the first that is not due (it and everything after it
/// wait). Each alert's sequence stays in order; alerts are ordered by when
/// their first notification became due.
fn due_in_order(pending: Vec<Delivery>, now: u64) -> Vec<Delivery> {
    let mut sequences: BTreeMap<(String, String), Vec<Delivery>> = BTreeMap::new();
    for delivery in pending {
        sequences
            .entry((delivery.channel.clone(), delivery.alert_id.clone()))
            .or_default()
            .push(delivery);
    }
    let mut ready: Vec<(u64, Vec<Delivery>)> = Vec::new();
    for mut sequence in sequences.into_values() {
        sequence.sort_by_key(|d| (d.window_start, status_rank(d.status)));
        let due = sequence
            .iter()
            .take_while(|d| d.next_attempt_at <= now)
            .count();
        sequence.truncate(due);
        if let Some(first) = sequence.first() {
            ready.push((first.next_attempt_at, sequence));
        }
    }
    ready.sort_by_key(|(due, _)| *due);
    ready
        .into_iter()
        .flat_map(|(_, sequence)| sequence)
        .collect()
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
    use NotificationStatus::{Firing, Resolved};

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

    fn delivery(
        alert: &str,
        status: NotificationStatus,
        window_start: i64,
        channel: &str,
        due: u64,
    ) -> Delivery {
        Delivery {
            alert_id: alert.into(),
            status,
            window_start,
            channel: channel.into(),
            state: DeliveryState::Pending,
            attempts: 0,
            next_attempt_at: due,
            last_error: String::new(),
            updated_at: 0,
        }
    }

    #[test]
    fn a_notification_waits_for_the_earlier_ones_of_its_alert_on_its_channel() {
        let pending = vec![
            // The firing is in backoff until 500; its resolution is due now.
            delivery("a", Firing, 1_000, "hook", 500),
            delivery("a", Resolved, 4_000, "hook", 10),
            // On another channel the firing was delivered: the resolution goes.
            delivery("a", Resolved, 4_000, "mail", 20),
            // A reminder waits for the first firing too.
            delivery("a", Firing, 2_000, "hook", 30),
            // Another alert is not held up.
            delivery("b", Firing, 1_000, "hook", 40),
        ];
        let order = |due: Vec<Delivery>| -> Vec<(String, NotificationStatus, i64, String)> {
            due.into_iter()
                .map(|d| (d.alert_id, d.status, d.window_start, d.channel))
                .collect()
        };
        assert_eq!(
            order(due_in_order(pending.clone(), 100)),
            vec![
                ("a".into(), Resolved, 4_000, "mail".into()),
                ("b".into(), Firing, 1_000, "hook".into()),
            ]
        );
        // Once the firing is due, the whole sequence goes, in order.
        assert_eq!(
            order(due_in_order(pending, 600)),
            vec![
                ("a".into(), Resolved, 4_000, "mail".into()),
                ("b".into(), Firing, 1_000, "hook".into()),
                ("a".into(), Firing, 1_000, "hook".into()),
                ("a".into(), Firing, 2_000, "hook".into()),
                ("a".into(), Resolved, 4_000, "hook".into()),
            ]
        );
    }

    #[test]
    fn http_answers_are_classified_and_retry_after_is_read() {
        use hyper::StatusCode;
        for code in [400u16, 401, 403, 404, 410, 422] {
            let status = StatusCode::from_u16(code).unwrap();
            assert!(
                !SendError::from_status(status, None).is_retryable(),
                "{code}"
            );
        }
        for code in [408u16, 425, 429, 500, 502, 503, 504] {
            let status = StatusCode::from_u16(code).unwrap();
            assert!(
                SendError::from_status(status, None).is_retryable(),
                "{code}"
            );
        }
        let mut headers = hyper::HeaderMap::new();
        headers.insert(hyper::header::RETRY_AFTER, "120".parse().unwrap());
        assert_eq!(retry_after(&headers, 0), Some(Duration::from_secs(120)));
        headers.insert(
            hyper::header::RETRY_AFTER,
            "Thu, 01 Jan 1970 00:01:40 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers, 40_000), Some(Duration::from_secs(60)));
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

    /// A bus refusing its first `refusals` sends, recording what it took.
    struct FlakyBus {
        refusals: std::sync::atomic::AtomicUsize,
        sent: std::sync::Mutex<Vec<(String, String, Vec<u8>)>>,
    }

    impl Bus for FlakyBus {
        fn publish<'a>(
            &'a self,
            topic: &'a str,
            key: &'a str,
            payload: Vec<u8>,
            _headers: Vec<(&'static str, String)>,
        ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
            Box::pin(async move {
                let refused = self
                    .refusals
                    .fetch_update(
                        std::sync::atomic::Ordering::SeqCst,
                        std::sync::atomic::Ordering::SeqCst,
                        |n| n.checked_sub(1),
                    )
                    .is_ok();
                if refused {
                    return Err("broker down".into());
                }
                self.sent
                    .lock()
                    .unwrap()
                    .push((topic.into(), key.into(), payload));
                Ok(())
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_event_is_published_again_until_the_bus_takes_it() {
        let bus = FlakyBus {
            refusals: 3.into(),
            sent: Default::default(),
        };
        let event = serde_json::json!({"id": "tw-1", "type": "io.tidewatch.retrain.completed"});
        let started = tokio::time::Instant::now();
        publish_until_sent(&bus, "acks", "churn", &event, Duration::from_secs(2)).await;
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(6),
            "three refusals, 2 s apart"
        );
        let sent = bus.sent.lock().unwrap();
        assert_eq!(sent.len(), 1);
        assert_eq!((sent[0].0.as_str(), sent[0].1.as_str()), ("acks", "churn"));
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&sent[0].2).unwrap(),
            event
        );
    }
}
