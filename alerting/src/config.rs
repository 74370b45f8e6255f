//! `[alerts]`: rules, channels and the retrain targets, as the TOML file
//! spells them ([`RawAlerts`]) and validated once into an
//! [`AlertingConfig`] whose channels and rules cannot be invalid. Errors
//! name the key (`alerts.channels[1].url`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::delivery::{Channel, ChannelKind, Endpoint, RetryPolicy};
use crate::notification::{is_reserved_channel, RETRAIN_BUS_CHANNEL, RETRAIN_WEBHOOK_CHANNEL};
use crate::rules::{default_rules, RawRule, Rule};
use crate::Error;

/// `[alerts]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAlerts {
    /// `[[alerts.rules]]`; none configured means the default rules.
    #[serde(default)]
    pub rules: Vec<RawRule>,
    /// `[[alerts.channels]]`.
    #[serde(default)]
    pub channels: Vec<RawChannel>,
    /// `[alerts.retrain]`: where retrain requests go.
    #[serde(default)]
    pub retrain: Option<RawRetrain>,
    /// `[alerts.delivery]`: how failed deliveries are retried.
    #[serde(default)]
    pub delivery: RawDelivery,
}

/// `[alerts.delivery]`: the retry policy of every channel.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDelivery {
    /// Attempts before a delivery is marked failed (a permanent refusal
    /// fails at once).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled after each failure (with
    /// jitter), unless the server asked for longer (`Retry-After`).
    #[serde(default = "default_initial_backoff", with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest wait between two attempts.
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Time allowed for one request.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_max_attempts() -> u32 {
    RetryPolicy::default().max_attempts
}

fn default_initial_backoff() -> Duration {
    Duration::from_millis(RetryPolicy::default().base_backoff_ms)
}

fn default_max_backoff() -> Duration {
    Duration::from_millis(RetryPolicy::default().max_backoff_ms)
}

fn default_request_timeout() -> Duration {
    RetryPolicy::default().timeout
}

impl Default for RawDelivery {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
            timeout: default_request_timeout(),
        }
    }
}

impl RawDelivery {
    fn validate(self) -> Result<RetryPolicy, Error> {
        RetryPolicy::new(
            self.max_attempts,
            self.initial_backoff,
            self.max_backoff,
            self.timeout,
        )
        .map_err(|invalid| Error::InvalidSetting {
            key: format!("alerts.delivery.{}", invalid.setting),
            message: invalid.rule.to_owned(),
        })
    }
}

/// `[alerts.retrain]`: the retrain endpoint and/or bus topic, and the
/// debounce.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetrain {
    /// Endpoint POSTed the request's CloudEvent (http:// or https://).
    #[serde(default)]
    pub url: Option<String>,
    /// Environment variable holding the signing secret for `url`.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Extra CA certificate (PEM) to trust for `url`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Kafka topic the request's CloudEvent is published to (needs `[kafka]`).
    #[serde(default)]
    pub topic: Option<String>,
    /// Kafka topic read for acknowledgements (needs `[kafka]`).
    #[serde(default)]
    pub ack_topic: Option<String>,
    /// How long a request blocks the next one for the same model version.
    #[serde(default = "default_retrain_debounce", with = "humantime_serde")]
    pub debounce: Duration,
}

fn default_retrain_debounce() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// `[[alerts.channels]]`: `type = "webhook"`, `"slack"` or `"email"`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RawChannel {
    /// A generic webhook, signed with the secret from `secret_env`.
    Webhook {
        /// Name referenced by rules.
        name: String,
        /// Endpoint (http:// or https://).
        url: String,
        /// Environment variable holding the signing secret.
        #[serde(default)]
        secret_env: Option<String>,
        /// Extra CA certificate (PEM) to trust for `url`.
        #[serde(default)]
        ca_file: Option<PathBuf>,
    },
    /// A Slack incoming webhook.
    Slack {
        /// Name referenced by rules.
        name: String,
        /// Incoming-webhook URL.
        url: String,
        /// Dashboard link put in messages.
        #[serde(default)]
        dashboard_url: Option<String>,
    },
    /// Email over SMTP.
    Email {
        /// Name referenced by rules.
        name: String,
        /// SMTP server.
        smtp_host: String,
        /// SMTP port (default: 587 for starttls, 465 for tls, 25 for none).
        #[serde(default)]
        smtp_port: Option<u16>,
        /// `starttls` (default), `tls` or `none`.
        #[serde(default = "default_smtp_security")]
        security: String,
        /// Environment variable holding the SMTP user name.
        #[serde(default)]
        username_env: Option<String>,
        /// Environment variable holding the SMTP password.
        #[serde(default)]
        password_env: Option<String>,
        /// Extra CA certificate (PEM) to trust for the SMTP server.
        #[serde(default)]
        ca_file: Option<PathBuf>,
        /// Sender, e.g. `"Tidewatch <tidewatch@example.org>"`.
        from: String,
        /// Recipients.
        to: Vec<String>,
        /// Dashboard link put in messages.
        #[serde(default)]
        dashboard_url: Option<String>,
    },
}

fn default_smtp_security() -> String {
    "starttls".into()
}

/// Validated `[alerts.retrain]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrainSettings {
    /// Debounce, ms.
    pub debounce_ms: u64,
    /// The reserved retrain channels configured (endpoint and/or bus).
    pub channels: Vec<String>,
    /// Topic of acknowledgements, if any.
    pub ack_topic: Option<String>,
    /// Topic the requests are published to, if any.
    pub request_topic: Option<String>,
}

/// Validated `[alerts]`.
#[derive(Debug, Clone)]
pub struct AlertingConfig {
    /// Every channel, the retrain targets included.
    pub channels: Vec<Channel>,
    /// The rules (the defaults when none is configured).
    pub rules: Vec<Rule>,
    /// The retrain targets, if configured.
    pub retrain: Option<RetrainSettings>,
    /// How failed deliveries are retried.
    pub retry: RetryPolicy,
}

impl RawAlerts {
    /// Validates the section. Relative `ca_file` paths are resolved against
    /// `config_dir`; secrets are read from the environment; `bus_available`
    /// says whether a Kafka bus is configured (retrain topics need one).
    pub fn validate(self, config_dir: &Path, bus_available: bool) -> Result<AlertingConfig, Error> {
        let invalid = |key: String, message: String| Error::InvalidSetting { key, message };
        let from_env = |key: &str, variable: &str| {
            std::env::var(variable).map_err(|_| {
                invalid(
                    key.to_owned(),
                    format!("environment variable `{variable}` is not set"),
                )
            })
        };
        let read_ca = |key: &str, path: &Option<PathBuf>| -> Result<Option<Vec<u8>>, Error> {
            path.as_ref()
                .map(|path| {
                    let path = config_dir.join(path);
                    std::fs::read(&path).map_err(|error| {
                        invalid(
                            key.to_owned(),
                            format!("cannot read `{}`: {error}", path.display()),
                        )
                    })
                })
                .transpose()
        };
        let mut alert_channels: Vec<Channel> = Vec::new();
        for (index, raw) in self.channels.into_iter().enumerate() {
            let key = format!("alerts.channels[{index}]");
            let (name, kind) = match raw {
                RawChannel::Webhook {
                    name,
                    url,
                    secret_env,
                    ca_file,
                } => {
                    let secret = secret_env
                        .map(|variable| from_env(&format!("{key}.secret_env"), &variable))
                        .transpose()?
                        .map(String::into_bytes);
                    let ca_pem = read_ca(&format!("{key}.ca_file"), &ca_file)?;
                    (
                        name,
                        ChannelKind::Webhook(Endpoint {
                            url,
                            secret,
                            ca_pem,
                        }),
                    )
                }
                RawChannel::Slack {
                    name,
                    url,
                    dashboard_url,
                } => (name, ChannelKind::Slack { url, dashboard_url }),
                RawChannel::Email {
                    name,
                    smtp_host,
                    smtp_port,
                    security,
                    username_env,
                    password_env,
                    ca_file,
                    from,
                    to,
                    dashboard_url,
                } => {
                    use crate::email::{Secret, SmtpSecurity};
                    let (security, default_port) = match security.as_str() {
                        "starttls" => (SmtpSecurity::StartTls, 587),
                        "tls" => (SmtpSecurity::Tls, 465),
                        "none" => (SmtpSecurity::None, 25),
                        other => {
                            return Err(invalid(
                                format!("{key}.security"),
                                format!("`{other}` is not one of starttls, tls, none"),
                            ))
                        }
                    };
                    let credentials = match (username_env, password_env) {
                        (None, None) => None,
                        (Some(user), Some(password)) => Some((
                            from_env(&format!("{key}.username_env"), &user)?,
                            Secret(from_env(&format!("{key}.password_env"), &password)?),
                        )),
                        (None, Some(_)) => {
                            return Err(invalid(
                                format!("{key}.username_env"),
                                "is needed with `password_env`".into(),
                            ))
                        }
                        (Some(_), None) => {
                            return Err(invalid(
                                format!("{key}.password_env"),
                                "is needed with `username_env`".into(),
                            ))
                        }
                    };
                    if credentials.is_some() && security == SmtpSecurity::None {
                        return Err(invalid(
                            format!("{key}.security"),
                            "`none` would send the SMTP password in clear text: use starttls or tls".into(),
                        ));
                    }
                    let settings = crate::email::EmailSettings {
                        host: smtp_host,
                        port: smtp_port.unwrap_or(default_port),
                        security,
                        credentials,
                        ca_pem: read_ca(&format!("{key}.ca_file"), &ca_file)?,
                        from,
                        to,
                        dashboard_url,
                    };
                    (name, ChannelKind::Email(Box::new(settings)))
                }
            };
            if name.trim().is_empty()
                || is_reserved_channel(&name)
                || alert_channels.iter().any(|channel| channel.name == name)
            {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("`{name}` is empty, listed twice or reserved (`retrain.*`)"),
                ));
            }
            let channel = Channel::new(name, kind, &key)?;
            alert_channels.push(channel);
        }

        let retrain = match self.retrain {
            None => None,
            Some(raw) => {
                let key = "alerts.retrain";
                let mut channels = Vec::new();
                if let Some(url) = raw.url {
                    let secret = raw
                        .secret_env
                        .map(|variable| from_env(&format!("{key}.secret_env"), &variable))
                        .transpose()?
                        .map(String::into_bytes);
                    let kind = ChannelKind::RetrainWebhook(Endpoint {
                        url,
                        secret,
                        ca_pem: read_ca(&format!("{key}.ca_file"), &raw.ca_file)?,
                    });
                    alert_channels.push(Channel::new(RETRAIN_WEBHOOK_CHANNEL.into(), kind, key)?);
                    channels.push(RETRAIN_WEBHOOK_CHANNEL.to_owned());
                }
                for (field, topic) in [("topic", &raw.topic), ("ack_topic", &raw.ack_topic)] {
                    if topic.is_some() && !bus_available {
                        return Err(invalid(
                            format!("{key}.{field}"),
                            "needs a `[kafka]` section (the bus)".into(),
                        ));
                    }
                }
                let request_topic = raw.topic.clone();
                if let Some(topic) = raw.topic {
                    alert_channels.push(Channel::new(
                        RETRAIN_BUS_CHANNEL.into(),
                        ChannelKind::Bus { topic },
                        key,
                    )?);
                    channels.push(RETRAIN_BUS_CHANNEL.to_owned());
                }
                if channels.is_empty() {
                    return Err(invalid(
                        key.to_owned(),
                        "sets neither `url` nor `topic`".into(),
                    ));
                }
                Some(RetrainSettings {
                    debounce_ms: raw.debounce.as_millis() as u64,
                    channels,
                    ack_topic: raw.ack_topic,
                    request_topic,
                })
            }
        };

        let mut alert_rules = Vec::with_capacity(self.rules.len());
        for (index, raw) in self.rules.into_iter().enumerate() {
            let key = format!("alerts.rules[{index}]");
            if alert_rules.iter().any(|rule: &Rule| rule.name == raw.name) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("rule `{}` is listed twice", raw.name),
                ));
            }
            let rule = Rule::from_raw(raw, &key)?;
            alert_rules.push(rule);
        }
        // Channels rules may name: the configured ones, not the retrain targets.
        let notify_channels: Vec<String> = alert_channels
            .iter()
            .map(|c| c.name.clone())
            .filter(|name| !is_reserved_channel(name))
            .collect();
        for (index, rule) in alert_rules.iter().enumerate() {
            if let Some(unknown) = rule
                .channels
                .iter()
                .find(|name| !notify_channels.contains(name))
            {
                return Err(invalid(
                    format!("alerts.rules[{index}].channels"),
                    format!("no channel named `{unknown}` in `alerts.channels`"),
                ));
            }
            if rule.retrain && retrain.is_none() {
                return Err(invalid(
                    format!("alerts.rules[{index}].retrain"),
                    "needs an `[alerts.retrain]` section (an endpoint `url` and/or a bus `topic`)"
                        .into(),
                ));
            }
        }
        if alert_rules.is_empty() {
            alert_rules = default_rules(&notify_channels);
        }
        Ok(AlertingConfig {
            channels: alert_channels,
            rules: alert_rules,
            retrain,
            retry: self.delivery.validate()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alerts(text: &str) -> Result<AlertingConfig, Error> {
        toml::from_str::<RawAlerts>(text)
            .unwrap()
            .validate(Path::new("."), false)
    }

    #[test]
    fn the_delivery_policy_is_a_setting_with_defaults() {
        let config = alerts("").unwrap();
        assert_eq!(config.retry, RetryPolicy::default());
        assert_eq!(config.rules.len(), 2, "no rules: the defaults");
        let config = alerts("[delivery]\nmax_attempts = 3\ninitial_backoff = \"2s\"").unwrap();
        assert_eq!(config.retry.max_attempts, 3);
        assert_eq!(config.retry.base_backoff_ms, 2_000);
        for (text, key) in [
            (
                "[delivery]\nmax_attempts = 0",
                "alerts.delivery.max_attempts",
            ),
            (
                "[delivery]\ninitial_backoff = \"10m\"",
                "alerts.delivery.max_backoff",
            ),
            ("[delivery]\ntimeout = \"0s\"", "alerts.delivery.timeout"),
        ] {
            match alerts(text) {
                Err(Error::InvalidSetting { key: found, .. }) => assert_eq!(found, key),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn retrain_topics_need_the_bus_and_channel_names_are_checked() {
        match alerts("[retrain]\ntopic = \"t\"") {
            Err(Error::InvalidSetting { key, .. }) => assert_eq!(key, "alerts.retrain.topic"),
            other => panic!("{other:?}"),
        }
        match alerts("[[channels]]\ntype = \"slack\"\nname = \"retrain.x\"\nurl = \"https://h\"") {
            Err(Error::InvalidSetting { key, .. }) => assert_eq!(key, "alerts.channels[0].name"),
            other => panic!("{other:?}"),
        }
    }
}
