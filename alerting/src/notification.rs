//! What every part of alerting shares about a notification: its status,
//! its idempotency key, how a send failed, the CloudEvents types of retrain
//! requests and the channel names reserved for them. Nothing here imports
//! another alerting module, so `delivery`, `payload`, `email` and `retrain`
//! all depend on it and not on each other in circles.

use std::time::Duration;

pub use store::{NotificationStatus, Severity};

/// The idempotency key of a notification (`X-Tidewatch-Alert-Id`, the
/// Message-ID, a retrain request's id): `{alert id}:{status}:{window start}`.
pub fn idempotency_key(alert_id: &str, status: NotificationStatus, window_start: i64) -> String {
    format!("{alert_id}:{status}:{window_start}")
}

/// (alert id, status, window start): one notification.
pub type NotificationKey = (String, NotificationStatus, i64);

/// CloudEvents type of a retrain request.
pub const RETRAIN_REQUESTED: &str = "io.tidewatch.retrain.requested";
/// CloudEvents types that clear a pending retrain request.
pub const RETRAIN_ACK_TYPES: [&str; 2] = [
    "io.tidewatch.retrain.completed",
    "io.tidewatch.retrain.failed",
];

/// Channel names starting with this are reserved for retrain requests.
pub const RESERVED_CHANNEL_PREFIX: &str = "retrain.";
/// Reserved channel name of the retrain endpoint.
pub const RETRAIN_WEBHOOK_CHANNEL: &str = "retrain.webhook";
/// Reserved channel name of the retrain event on the bus.
pub const RETRAIN_BUS_CHANNEL: &str = "retrain.bus";

/// Whether users may not name a channel `name` (it is, or may become, a
/// channel of retrain requests).
pub fn is_reserved_channel(name: &str) -> bool {
    name.starts_with(RESERVED_CHANNEL_PREFIX)
}

/// Why an attempt failed, and whether another attempt may succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Try again later (after `retry_after`, when the server said so).
    Retryable {
        /// What happened.
        reason: String,
        /// The server's `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
    },
    /// Trying again will fail the same way.
    Permanent(String),
}

impl SendError {
    pub(crate) fn retryable(reason: impl Into<String>) -> Self {
        SendError::Retryable {
            reason: reason.into(),
            retry_after: None,
        }
    }

    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SendError::Retryable { .. })
    }

    /// The reason, without the classification.
    pub fn reason(&self) -> &str {
        match self {
            SendError::Retryable { reason, .. } | SendError::Permanent(reason) => reason,
        }
    }

    /// The classification of an HTTP answer that is not a success.
    pub fn from_status(status: hyper::StatusCode, retry_after: Option<Duration>) -> Self {
        let reason = format!("HTTP {status}");
        let code = status.as_u16();
        if status.is_server_error() || matches!(code, 408 | 425 | 429) {
            SendError::Retryable {
                reason,
                retry_after,
            }
        } else {
            SendError::Permanent(reason)
        }
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}
