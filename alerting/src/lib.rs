//! # alerting — from window metrics to notifications
//!
//! ## Layout
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
//! - [`delivery`]: [`delivery::Sender`], which sends what the store's outbox
//!   holds to webhook and Slack channels, with exponential backoff and
//!   jitter, recording every outcome so a restart loses and repeats nothing.
//!
//! Email and retraining triggers on the bus come next.

pub mod delivery;
pub mod lifecycle;
pub mod payload;
pub mod rules;

/// Alerting errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A rule breaks a rule of its own; `key` is its config path.
    #[error("`{key}`: {message}")]
    InvalidRule {
        /// Config path of the offending key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The store failed (see `store::Error::is_retryable`).
    #[error(transparent)]
    Store(#[from] store::Error),
}
