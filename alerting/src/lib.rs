//! # alerting — from window metrics to notifications
//!
//! ## Layout
//! - [`config`]: `[alerts]` as written ([`config::RawAlerts`]) and validated
//!   once into channels, rules and retrain targets.
//! - [`rules`]: `[[alerts.rules]]` (drift on N series, static thresholds on
//!   any metric, quality drops against a baseline), validated once; the
//!   default rules every model gets.
//! - [`lifecycle`]: [`lifecycle::AlertEvaluator`], the state machine per
//!   (rule, model, version, segment): fire after N consecutive windows,
//!   repeat after a cooldown, resolve after M clear windows; one alert per
//!   rule and window lists every series behind it, most severe first, under
//!   a stable id.
//! - [`payload`]: Slack Block Kit messages, generic webhook bodies and their
//!   HMAC-SHA256 signatures (with the verification receivers need).
//!
//!   Email bodies (plain text and HTML) and the CloudEvents document of a
//!   retrain request are rendered here too.
//! - [`email`]: SMTP settings (STARTTLS, implicit TLS or plain; credentials
//!   from the environment) and the `lettre` transport.
//! - [`retrain`]: [`retrain::RetrainGate`], which turns firing alerts of
//!   rules with `retrain = true` into retrain requests, debounced per model
//!   version until a deadline or an acknowledgement on the bus.
//! - [`notification`]: what the other modules share about a notification
//!   (status, severity, idempotency key, send errors, the CloudEvents types
//!   and reserved channel names of retrain requests); it imports none of them.
//! - [`delivery`]: [`delivery::Sender`], which sends what the store's outbox
//!   holds to webhook, Slack, email, retrain-endpoint and bus channels, with
//!   exponential backoff and jitter, recording every outcome so a restart
//!   loses and repeats nothing.
//!
//! ```text
//! WindowMetrics ─▶ AlertEvaluator ─▶ Alert ─┬─▶ outbox (alerts, alert_deliveries)
//!                                           └─▶ RetrainGate ─▶ retrain request ─▶ outbox
//! outbox ─▶ Sender ─▶ Slack · webhook · email · retrain webhook · bus (Kafka)
//! ```

pub mod config;
pub mod delivery;
pub mod email;
pub mod lifecycle;
pub mod notification;
pub mod payload;
pub mod retrain;
pub mod rules;

/// Alerting errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting of `[alerts]` is invalid; `key` is its config path.
    #[error("`{key}`: {message}")]
    InvalidSetting {
        /// Config path of the offending key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A channel could not be set up (TLS roots, SMTP transport).
    #[error("channel setup: {0}")]
    Setup(String),
    /// The store failed (see `store::Error::is_retryable`).
    #[error(transparent)]
    Store(#[from] store::Error),
}
