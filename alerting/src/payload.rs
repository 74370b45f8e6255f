//! What channels receive: a Slack Block Kit message, a generic webhook body,
//! and the webhook signature.
//!
//! ## Webhook signature
//! Each webhook request carries `X-Tidewatch-Timestamp` (Unix seconds) and
//! `X-Tidewatch-Signature: v1=<hex>`, where `<hex>` is
//! HMAC-SHA256(secret, `"{timestamp}.{body}"`). A receiver recomputes it
//! over the raw body, compares in constant time ([`verify`] does both), and
//! rejects timestamps older than a few minutes so a captured request cannot
//! be replayed.

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::lifecycle::{Alert, AlertStatus};

/// Header with the signature.
pub const SIGNATURE_HEADER: &str = "X-Tidewatch-Signature";
/// Header with the signing time.
pub const TIMESTAMP_HEADER: &str = "X-Tidewatch-Timestamp";

/// `v1=` + hex HMAC-SHA256 of `"{timestamp}.{body}"`.
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("v1={hex}")
}

/// Checks a signature (constant time) and that the timestamp is at most
/// `tolerance_seconds` away from `now`.
pub fn verify(
    secret: &[u8],
    timestamp: u64,
    body: &[u8],
    signature: &str,
    now: u64,
    tolerance_seconds: u64,
) -> bool {
    if now.abs_diff(timestamp) > tolerance_seconds {
        return false;
    }
    let Some(hex) = signature.strip_prefix("v1=") else {
        return false;
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return false;
    }
    let expected: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0))
        .collect();
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// The generic webhook body: the alert as JSON, plus a schema marker.
pub fn webhook_body(alert: &Alert) -> Vec<u8> {
    let mut value = serde_json::to_value(alert).expect("alerts serialize");
    value["schema"] = json!("tidewatch.alert.v1");
    serde_json::to_vec(&value).expect("json serializes")
}

/// A Slack incoming-webhook message (Block Kit): header, the model, version,
/// window and severity, the top findings with their thresholds, and a link
/// to the dashboard.
pub fn slack_message(alert: &Alert, dashboard_url: Option<&str>) -> Value {
    let icon = match (alert.status, alert.severity) {
        (AlertStatus::Resolved, _) => ":white_check_mark:",
        (_, crate::rules::Severity::Critical) => ":rotating_light:",
        (_, crate::rules::Severity::Warning) => ":warning:",
        (_, crate::rules::Severity::Info) => ":information_source:",
    };
    let status = match alert.status {
        AlertStatus::Firing if alert.repeat => "still firing",
        AlertStatus::Firing => "firing",
        AlertStatus::Resolved => "resolved",
    };
    let window = format!(
        "{} → {}",
        format_time(alert.window_start),
        format_time(alert.window_end)
    );
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": format!("{icon} {} {status}: {}", alert.rule, alert.model)}}),
        json!({"type": "section", "fields": [
            {"type": "mrkdwn", "text": format!("*Model*\n{} v{}", alert.model, alert.model_version)},
            {"type": "mrkdwn", "text": format!("*Severity*\n{}", alert.severity.as_str())},
            {"type": "mrkdwn", "text": format!("*Window (UTC)*\n{window}")},
            {"type": "mrkdwn", "text": format!("*Segment*\n{}", alert.segment)},
        ]}),
    ];
    if !alert.findings.is_empty() {
        let lines: Vec<String> = alert
            .findings
            .iter()
            .take(10)
            .map(|f| {
                format!(
                    "• `{}` {} = {:.4} (threshold {:.4})",
                    f.feature, f.test, f.value, f.threshold
                )
            })
            .collect();
        let more = alert.findings.len().saturating_sub(10);
        let tail = if more > 0 {
            format!("\n… and {more} more")
        } else {
            String::new()
        };
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("{}{tail}", lines.join("\n"))}}));
    }
    if let Some(url) = dashboard_url {
        blocks.push(json!({"type": "actions", "elements": [
            {"type": "button", "text": {"type": "plain_text", "text": "Open dashboard"}, "url": url}
        ]}));
    }
    blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("alert id `{}`", alert.id)}]}));
    json!({"text": alert.summary, "blocks": blocks})
}

fn format_time(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis)
        .map(|time| time.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|| millis.to_string())
}
