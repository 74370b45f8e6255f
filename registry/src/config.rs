//! `[registry]`: where the registry keeps its state.
//!
//! ```toml
//! [registry]
//! enabled = true                       # served wherever [http] is (default)
//! path = "tidewatch-registry.sqlite"   # relative to the config file
//! topic = "tidewatch.registry"         # where its events go, with [kafka]
//!
//! [registry.bridge]                    # optional: follow an MLflow server too
//! mlflow_url = "http://mlflow:5000"    # polled every poll_interval (any MLflow)
//! poll_interval = "30s"
//! webhook_secret_env = "MLFLOW_WEBHOOK_SECRET"  # receive its webhooks (MLflow ≥ 3.3)
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The section as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegistry {
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    #[serde(default = "default_path")]
    pub path: PathBuf,
    #[serde(default = "default_topic")]
    pub topic: String,
    #[serde(default)]
    pub bridge: Option<RawBridge>,
}

impl Default for RawRegistry {
    fn default() -> Self {
        Self {
            enabled: default_enabled(),
            path: default_path(),
            topic: default_topic(),
            bridge: None,
        }
    }
}

/// `[registry.bridge]`: an MLflow server whose changes become registry
/// events.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBridge {
    /// The MLflow server (`http://host:port`), polled with `poll_interval`.
    #[serde(default)]
    pub mlflow_url: Option<String>,
    /// How often it is polled (default 30 s when `mlflow_url` is set).
    #[serde(default, with = "humantime_serde")]
    pub poll_interval: Option<std::time::Duration>,
    /// Environment variable holding the secret MLflow signs its webhooks
    /// with; set, Tidewatch receives them at
    /// [`crate::bridge::WEBHOOK_PATH`].
    #[serde(default)]
    pub webhook_secret_env: Option<String>,
}

/// Validated `[registry.bridge]`.
#[derive(Clone, PartialEq, Eq)]
pub struct BridgeSettings {
    poll: Option<(String, std::time::Duration)>,
    webhook_secret: Option<String>,
}

impl std::fmt::Debug for BridgeSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BridgeSettings")
            .field("poll", &self.poll)
            .field("webhook", &self.webhook_secret.is_some())
            .finish()
    }
}

impl BridgeSettings {
    /// The MLflow server to poll and how often.
    pub fn poll(&self) -> Option<(&str, std::time::Duration)> {
        self.poll
            .as_ref()
            .map(|(url, every)| (url.as_str(), *every))
    }
    /// The webhook secret, when webhooks are received.
    pub fn webhook_secret(&self) -> Option<&str> {
        self.webhook_secret.as_deref()
    }
}

impl RawBridge {
    fn validate(self) -> Result<BridgeSettings, InvalidSetting> {
        let invalid = |key: &str, message: String| InvalidSetting {
            key: format!("bridge.{key}"),
            message,
        };
        let poll = match (self.mlflow_url, self.poll_interval) {
            (None, Some(_)) => return Err(invalid("poll_interval", "needs mlflow_url".into())),
            (None, None) => None,
            (Some(url), every) => {
                let url = url.trim_end_matches('/').to_owned();
                let rest = url.strip_prefix("http://").ok_or_else(|| {
                    invalid("mlflow_url", format!("`{url}` is not an http:// URL"))
                })?;
                if rest.is_empty() || rest.contains('/') {
                    return Err(invalid(
                        "mlflow_url",
                        format!("`{url}` must be http://host:port, without a path"),
                    ));
                }
                let every = every.unwrap_or(std::time::Duration::from_secs(30));
                if every < std::time::Duration::from_secs(1) {
                    return Err(invalid("poll_interval", "at least 1s".into()));
                }
                Some((url, every))
            }
        };
        let webhook_secret = match self.webhook_secret_env {
            None => None,
            Some(name) => {
                let secret = std::env::var(&name).map_err(|_| {
                    invalid(
                        "webhook_secret_env",
                        format!("the environment variable `{name}` is not set"),
                    )
                })?;
                if secret.len() < 16 {
                    return Err(invalid(
                        "webhook_secret_env",
                        format!("the secret in `{name}` is shorter than 16 bytes"),
                    ));
                }
                Some(secret)
            }
        };
        if poll.is_none() && webhook_secret.is_none() {
            return Err(invalid(
                "mlflow_url",
                "set mlflow_url (polling), webhook_secret_env (webhooks) or both".into(),
            ));
        }
        Ok(BridgeSettings {
            poll,
            webhook_secret,
        })
    }
}

fn default_topic() -> String {
    "tidewatch.registry".into()
}

fn default_enabled() -> bool {
    true
}

fn default_path() -> PathBuf {
    PathBuf::from("tidewatch-registry.sqlite")
}

/// A setting that is not valid: its key and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSetting {
    pub key: String,
    pub message: String,
}

/// The validated section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrySettings {
    path: PathBuf,
    topic: String,
    bridge: Option<BridgeSettings>,
}

impl RegistrySettings {
    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The topic its events are published to (with `[kafka]`).
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The MLflow bridge, if configured.
    pub fn bridge(&self) -> Option<&BridgeSettings> {
        self.bridge.as_ref()
    }
}

impl RawRegistry {
    /// `None` when disabled; paths resolved against `base` (the config
    /// file's folder).
    pub fn validate(self, base: &Path) -> Result<Option<RegistrySettings>, InvalidSetting> {
        if !self.enabled {
            return Ok(None);
        }
        if self.path.as_os_str().is_empty() {
            return Err(InvalidSetting {
                key: "path".into(),
                message: "must name a file".into(),
            });
        }
        if self.topic.trim().is_empty() {
            return Err(InvalidSetting {
                key: "topic".into(),
                message: "must name a topic".into(),
            });
        }
        let bridge = self.bridge.map(RawBridge::validate).transpose()?;
        Ok(Some(RegistrySettings {
            path: base.join(self.path),
            topic: self.topic,
            bridge,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_resolve_beside_the_config_and_disabled_is_none() {
        let settings = RawRegistry::default()
            .validate(Path::new("/etc/tidewatch"))
            .unwrap()
            .unwrap();
        assert_eq!(
            settings.path(),
            Path::new("/etc/tidewatch/tidewatch-registry.sqlite")
        );
        let disabled: RawRegistry = serde_json::from_str(r#"{"enabled": false}"#).unwrap();
        assert_eq!(disabled.validate(Path::new(".")).unwrap(), None);
        let empty: RawRegistry = serde_json::from_str(r#"{"path": ""}"#).unwrap();
        assert_eq!(empty.validate(Path::new(".")).unwrap_err().key, "path");
        assert_eq!(settings.topic(), "tidewatch.registry");
        let no_topic: RawRegistry = serde_json::from_str(r#"{"topic": " "}"#).unwrap();
        assert_eq!(no_topic.validate(Path::new(".")).unwrap_err().key, "topic");
        assert!(serde_json::from_str::<RawRegistry>(r#"{"extra": 1}"#).is_err());

        let bridge = |json: &str| {
            serde_json::from_str::<RawRegistry>(json)
                .unwrap()
                .validate(Path::new("."))
        };
        let polled = bridge(r#"{"bridge": {"mlflow_url": "http://127.0.0.1:5000/"}}"#)
            .unwrap()
            .unwrap();
        assert_eq!(
            polled.bridge().unwrap().poll(),
            Some(("http://127.0.0.1:5000", std::time::Duration::from_secs(30)))
        );
        for (json, key) in [
            (r#"{"bridge": {}}"#, "bridge.mlflow_url"),
            (
                r#"{"bridge": {"poll_interval": "5s"}}"#,
                "bridge.poll_interval",
            ),
            (
                r#"{"bridge": {"mlflow_url": "ftp://x"}}"#,
                "bridge.mlflow_url",
            ),
            (
                r#"{"bridge": {"webhook_secret_env": "TIDEWATCH_NO_SUCH_VARIABLE"}}"#,
                "bridge.webhook_secret_env",
            ),
        ] {
            assert_eq!(bridge(json).unwrap_err().key, key, "{json}");
        }
    }
}
