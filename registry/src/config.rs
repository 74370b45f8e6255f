//! `[registry]`: where the registry keeps its state.
//!
//! ```toml
//! [registry]
//! enabled = true                       # served wherever [http] is (default)
//! path = "tidewatch-registry.sqlite"   # relative to the config file
//! topic = "tidewatch.registry"         # where its events go, with [kafka]
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
}

impl Default for RawRegistry {
    fn default() -> Self {
        Self {
            enabled: default_enabled(),
            path: default_path(),
            topic: default_topic(),
        }
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
        Ok(Some(RegistrySettings {
            path: base.join(self.path),
            topic: self.topic,
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
    }
}
