//! Email over SMTP with `lettre`: connection settings, the transport, and
//! sending one rendered notification.
//!
//! Security is explicit: `starttls` (plain connection upgraded before AUTH,
//! refused if the server does not offer STARTTLS), `tls` (implicit TLS,
//! usually port 465) or `none` (plain, for a relay on the local host only).
//! Certificates are checked against the Mozilla roots (webpki-roots) plus an
//! optional extra CA (`ca_file`, for an internal relay). Credentials come
//! from environment variables named in the config, never from the file.

use std::fmt;
use std::time::Duration;

use lettre::message::{header, Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::lifecycle::Alert;
use crate::payload::email_message;
use crate::Error;

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// Plain text throughout (local relays only).
    None,
    /// Plain connection upgraded with STARTTLS, which is required.
    StartTls,
    /// TLS from the first byte (SMTPS).
    Tls,
}

/// A value that never appears in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// A validated email channel.
#[derive(Debug, Clone, PartialEq)]
pub struct EmailSettings {
    /// SMTP server host name (also the name its certificate must carry).
    pub host: String,
    /// SMTP port.
    pub port: u16,
    /// Connection security.
    pub security: SmtpSecurity,
    /// User name and password for AUTH, if the server wants them.
    pub credentials: Option<(String, Secret)>,
    /// An extra CA certificate (PEM) to trust besides the Mozilla roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Sender.
    pub from: String,
    /// Recipients (at least one).
    pub to: Vec<String>,
    /// Link put in messages.
    pub dashboard_url: Option<String>,
}

impl EmailSettings {
    /// Checks addresses and TLS material; `key` is the channel's config path.
    pub fn validate(&self, key: &str) -> Result<(), Error> {
        let invalid = |field: &str, message: String| Error::InvalidSetting {
            key: format!("{key}.{field}"),
            message,
        };
        if self.host.trim().is_empty() {
            return Err(invalid("smtp_host", "is empty".into()));
        }
        self.from
            .parse::<Mailbox>()
            .map_err(|error| invalid("from", format!("`{}`: {error}", self.from)))?;
        if self.to.is_empty() {
            return Err(invalid("to", "lists no recipient".into()));
        }
        for address in &self.to {
            address
                .parse::<Mailbox>()
                .map_err(|error| invalid("to", format!("`{address}`: {error}")))?;
        }
        if let Some(pem) = &self.ca_pem {
            Certificate::from_pem(pem)
                .map_err(|error| invalid("ca_file", format!("not a PEM certificate: {error}")))?;
        }
        self.transport(Duration::from_secs(10))
            .map_err(|error| invalid("smtp_host", error))?;
        Ok(())
    }

    /// The lettre transport for these settings.
    pub(crate) fn transport(
        &self,
        timeout: Duration,
    ) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
        let tls = || -> Result<TlsParameters, String> {
            let mut builder = TlsParameters::builder(self.host.clone());
            if let Some(pem) = &self.ca_pem {
                builder = builder.add_root_certificate(
                    Certificate::from_pem(pem).map_err(|error| error.to_string())?,
                );
            }
            builder.build_rustls().map_err(|error| error.to_string())
        };
        let tls = match self.security {
            SmtpSecurity::None => Tls::None,
            SmtpSecurity::StartTls => Tls::Required(tls()?),
            SmtpSecurity::Tls => Tls::Wrapper(tls()?),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&self.host)
            .port(self.port)
            .tls(tls)
            .timeout(Some(timeout));
        if let Some((user, password)) = &self.credentials {
            builder = builder.credentials(Credentials::new(user.clone(), password.0.clone()));
        }
        Ok(builder.build())
    }

    /// The message for `alert`: plain-text and HTML parts, and a Message-ID
    /// derived from the idempotency key `key` so mail systems can spot a
    /// repeat after a crash.
    pub fn message(&self, alert: &Alert, key: &str) -> Result<Message, String> {
        let rendered = email_message(alert, self.dashboard_url.as_deref());
        let mut builder = Message::builder()
            .from(self.from.parse().map_err(|e| format!("from: {e}"))?)
            .subject(rendered.subject)
            .message_id(Some(format!("<{}@tidewatch>", message_id_part(key))))
            .header(header::UserAgent::from("Tidewatch".to_owned()));
        for address in &self.to {
            builder = builder.to(address.parse().map_err(|e| format!("to: {e}"))?);
        }
        builder
            .multipart(MultiPart::alternative_plain_html(
                rendered.text,
                rendered.html,
            ))
            .map_err(|error| error.to_string())
    }
}

/// The idempotency key made safe for a Message-ID's left part.
fn message_id_part(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '.'
            }
        })
        .collect()
}

/// Sends `message` through `transport`.
/// Sends one message. A permanent SMTP reply (5xx: bad credentials, a
/// rejected recipient) is not retryable; anything else is.
pub(crate) async fn send(
    transport: &AsyncSmtpTransport<Tokio1Executor>,
    message: Message,
) -> Result<(), crate::notification::SendError> {
    transport.send(message).await.map(|_| ()).map_err(|error| {
        let reason = format!("SMTP: {error}");
        if error.is_permanent() {
            crate::notification::SendError::Permanent(reason)
        } else {
            crate::notification::SendError::Retryable {
                reason,
                retry_after: None,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> EmailSettings {
        EmailSettings {
            host: "127.0.0.1".into(),
            port: 2525,
            security: SmtpSecurity::StartTls,
            credentials: Some(("ml".into(), Secret("hunter2".into()))),
            ca_pem: None,
            from: "Tidewatch <tidewatch@example.org>".into(),
            to: vec!["oncall@example.org".into()],
            dashboard_url: None,
        }
    }

    #[test]
    fn bad_addresses_and_certificates_are_refused_naming_the_key() {
        let mut bad = settings();
        bad.from = "not an address".into();
        assert!(bad
            .validate("alerts.channels[2]")
            .unwrap_err()
            .to_string()
            .starts_with("`alerts.channels[2].from`"));
        let mut bad = settings();
        bad.to = vec![];
        assert!(bad
            .validate("k")
            .unwrap_err()
            .to_string()
            .contains("`k.to`"));
        let mut bad = settings();
        bad.ca_pem = Some(b"-----BEGIN CERTIFICATE-----\nnope\n".to_vec());
        assert!(bad
            .validate("k")
            .unwrap_err()
            .to_string()
            .contains("`k.ca_file`"));
        settings().validate("k").unwrap();
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let shown = format!("{:?}", settings());
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn message_ids_are_derived_from_the_idempotency_key() {
        assert_eq!(
            message_id_part("tw-1a2b:firing:1700"),
            "tw-1a2b.firing.1700"
        );
    }
}
