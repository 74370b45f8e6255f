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
    let status = status_label(alert);
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

/// "firing", "still firing" (a reminder) or "resolved".
fn status_label(alert: &Alert) -> &'static str {
    match alert.status {
        AlertStatus::Firing if alert.repeat => "still firing",
        status => status.as_str(),
    }
}

/// An email notification's parts.
#[derive(Debug, Clone, PartialEq)]
pub struct EmailContent {
    /// Subject line (the alert's summary).
    pub subject: String,
    /// Plain-text part.
    pub text: String,
    /// HTML part (the same content, with a findings table).
    pub html: String,
}

/// The email for `alert`: what the Slack message says, as plain text and
/// as HTML (every value escaped).
pub fn email_message(alert: &Alert, dashboard_url: Option<&str>) -> EmailContent {
    let status = status_label(alert);
    let window = format!(
        "{} → {} UTC",
        format_time(alert.window_start),
        format_time(alert.window_end)
    );
    let facts = [
        ("Rule", alert.rule.clone()),
        ("Status", status.to_owned()),
        ("Severity", alert.severity.as_str().to_owned()),
        ("Model", format!("{} v{}", alert.model, alert.model_version)),
        ("Segment", alert.segment.clone()),
        ("Window", window),
        ("Alert id", alert.id.clone()),
    ];
    let mut text = format!("{}\n\n", alert.summary);
    for (name, value) in &facts {
        text.push_str(&format!("{name:<9} {value}\n"));
    }
    if !alert.findings.is_empty() {
        text.push_str("\nFindings (most severe first):\n");
        for f in &alert.findings {
            text.push_str(&format!(
                "  {:<28} {:<20} {:>12.4}  threshold {:.4}\n",
                f.feature, f.test, f.value, f.threshold
            ));
        }
    }
    if let Some(url) = dashboard_url {
        text.push_str(&format!("\nDashboard: {url}\n"));
    }

    let mut html = format!(
        "<!doctype html><html><body style=\"font-family:sans-serif\"><h2>{}</h2><table>",
        escape_html(&alert.summary)
    );
    for (name, value) in &facts {
        html.push_str(&format!(
            "<tr><th align=\"left\">{}</th><td>{}</td></tr>",
            escape_html(name),
            escape_html(value)
        ));
    }
    html.push_str("</table>");
    if !alert.findings.is_empty() {
        html.push_str("<h3>Findings</h3><table border=\"1\" cellpadding=\"4\" style=\"border-collapse:collapse\"><tr><th>Series</th><th>Test</th><th>Value</th><th>Threshold</th></tr>");
        for f in &alert.findings {
            html.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td align=\"right\">{:.4}</td><td align=\"right\">{:.4}</td></tr>",
                escape_html(&f.feature),
                escape_html(&f.test),
                f.value,
                f.threshold
            ));
        }
        html.push_str("</table>");
    }
    if let Some(url) = dashboard_url {
        html.push_str(&format!(
            "<p><a href=\"{}\">Open the dashboard</a></p>",
            escape_html(url)
        ));
    }
    html.push_str("</body></html>");
    EmailContent {
        subject: alert.summary.clone(),
        text,
        html,
    }
}

/// Escapes text for HTML element content and attribute values.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The CloudEvents 1.0 document (structured JSON) of a retrain request:
/// type [`crate::notification::RETRAIN_REQUESTED`], id = `request_id`, subject =
/// `model/version`, and as data the model, version, segment, reason, the
/// drifted features and the window range to train on (from the first
/// window of the drift to the end of the window that fired, ms and
/// RFC 3339). `time` is when the request was recorded (`recorded_at`, ms).
pub fn retrain_event(alert: &Alert, request_id: &str, recorded_at: u64) -> Value {
    let rfc3339 = |millis: i64| {
        chrono::DateTime::from_timestamp_millis(millis)
            .map(|time| time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default()
    };
    let features: Vec<Value> = alert
        .findings
        .iter()
        .map(|f| json!({"feature": f.feature, "test": f.test, "value": f.value, "threshold": f.threshold}))
        .collect();
    let onset = if alert.onset == 0 {
        alert.window_start
    } else {
        alert.onset
    };
    json!({
        "specversion": "1.0",
        "type": crate::notification::RETRAIN_REQUESTED,
        "source": format!("tidewatch/models/{}", alert.model),
        "id": request_id,
        "time": rfc3339(recorded_at as i64),
        "subject": format!("{}/{}", alert.model, alert.model_version),
        "datacontenttype": "application/json",
        "data": {
            "request_id": request_id,
            "alert_id": alert.id,
            "model": alert.model,
            "version": alert.model_version,
            "segment": alert.segment,
            "rule": alert.rule,
            "severity": alert.severity.as_str(),
            "reason": alert.summary,
            "drifted_features": features,
            "train_window": {
                "start": rfc3339(onset),
                "end": rfc3339(alert.window_end),
                "start_ms": onset,
                "end_ms": alert.window_end,
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escaping_covers_markup_and_quotes() {
        assert_eq!(
            escape_html(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
