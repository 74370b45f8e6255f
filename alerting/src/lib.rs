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
//! Delivery (outbox, retries, email, retraining triggers on the bus) builds
//! on these and is wired in the service.

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
}
