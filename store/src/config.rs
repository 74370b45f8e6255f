//! `[store]`: which backend, where, and how long a failing operation waits
//! between attempts. [`RawStoreConfig`] is the TOML section;
//! [`RawStoreConfig::validate`] turns it into a [`StoreConfig`] that cannot
//! be invalid, and [`StoreConfig::open`] opens the backend it names (the one
//! place a new backend is registered).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::{clickhouse_store::ClickHouseStore, embedded::EmbeddedStore, Error, Result, Store};

/// `[store]`: `type = "embedded"` (default) or `type = "clickhouse"`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RawStoreConfig {
    /// SQLite file.
    Embedded(RawEmbedded),
    /// ClickHouse server.
    #[serde(rename = "clickhouse")]
    ClickHouse(RawClickHouse),
}

impl Default for RawStoreConfig {
    fn default() -> Self {
        RawStoreConfig::Embedded(RawEmbedded {
            path: default_embedded_path(),
            retry_max_delay: default_retry_max_delay(),
        })
    }
}

/// `[store] type = "embedded"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEmbedded {
    /// SQLite file; relative paths are relative to the config file.
    #[serde(default = "default_embedded_path")]
    pub path: PathBuf,
    /// Longest wait between attempts of a failing store operation (retried
    /// without limit; consumption waits).
    #[serde(default = "default_retry_max_delay", with = "humantime_serde")]
    pub retry_max_delay: Duration,
}

/// `[store] type = "clickhouse"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClickHouse {
    /// HTTP endpoint, e.g. `"http://127.0.0.1:8123"`.
    pub url: String,
    /// Database (created if missing).
    #[serde(default = "default_database")]
    pub database: String,
    /// User, if not `default`.
    #[serde(default)]
    pub user: Option<String>,
    /// Name of the environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Longest wait between attempts of a failing store operation (retried
    /// without limit; consumption waits).
    #[serde(default = "default_retry_max_delay", with = "humantime_serde")]
    pub retry_max_delay: Duration,
}

fn default_embedded_path() -> PathBuf {
    PathBuf::from(".tidewatch/tidewatch.db")
}

fn default_database() -> String {
    "tidewatch".into()
}

fn default_retry_max_delay() -> Duration {
    Duration::from_secs(5)
}

/// A `[store]` setting that is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct InvalidSetting {
    /// The key within `[store]`.
    pub key: &'static str,
    /// What is wrong with it.
    pub message: String,
}

/// Validated store settings.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    backend: BackendConfig,
    retry_max_delay: Duration,
}

#[derive(Debug, Clone, PartialEq)]
enum BackendConfig {
    Embedded {
        path: PathBuf,
    },
    ClickHouse {
        url: String,
        database: String,
        user: Option<String>,
        password: Option<String>,
    },
}

impl RawStoreConfig {
    /// Validates the section; relative paths are resolved against
    /// `config_dir`, `password_env` is read from the environment.
    pub fn validate(self, config_dir: &Path) -> std::result::Result<StoreConfig, InvalidSetting> {
        let invalid = |key, message: String| InvalidSetting { key, message };
        let (backend, retry_max_delay) = match self {
            RawStoreConfig::Embedded(embedded) => {
                let path = if embedded.path.is_relative() {
                    config_dir.join(&embedded.path)
                } else {
                    embedded.path
                };
                (BackendConfig::Embedded { path }, embedded.retry_max_delay)
            }
            RawStoreConfig::ClickHouse(clickhouse) => {
                if !(clickhouse.url.starts_with("http://")
                    || clickhouse.url.starts_with("https://"))
                {
                    return Err(invalid(
                        "url",
                        format!("`{}` must start with http:// or https://", clickhouse.url),
                    ));
                }
                if !valid_database_name(&clickhouse.database) {
                    return Err(invalid(
                        "database",
                        "must be ASCII letters, digits or `_`".into(),
                    ));
                }
                let password = match &clickhouse.password_env {
                    None => None,
                    Some(variable) => Some(std::env::var(variable).map_err(|_| {
                        invalid(
                            "password_env",
                            format!("environment variable `{variable}` is not set"),
                        )
                    })?),
                };
                let backend = BackendConfig::ClickHouse {
                    url: clickhouse.url,
                    database: clickhouse.database,
                    user: clickhouse.user,
                    password,
                };
                (backend, clickhouse.retry_max_delay)
            }
        };
        if retry_max_delay.is_zero() {
            return Err(invalid("retry_max_delay", "must be positive".into()));
        }
        Ok(StoreConfig {
            backend,
            retry_max_delay,
        })
    }
}

pub(crate) fn valid_database_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl StoreConfig {
    /// Which store, for a human: `embedded (PATH)` or `ClickHouse URL/DATABASE`.
    pub fn describe(&self) -> String {
        match &self.backend {
            BackendConfig::Embedded { path } => format!("embedded ({})", path.display()),
            BackendConfig::ClickHouse { url, database, .. } => {
                format!("ClickHouse {url}/{database}")
            }
        }
    }

    /// Longest wait between attempts of a failing store operation.
    pub fn retry_max_delay(&self) -> Duration {
        self.retry_max_delay
    }

    /// Whether this is a ClickHouse store.
    pub fn is_clickhouse(&self) -> bool {
        matches!(self.backend, BackendConfig::ClickHouse { .. })
    }

    /// The SQLite file of an embedded store.
    pub fn embedded_path(&self) -> Option<&Path> {
        match &self.backend {
            BackendConfig::Embedded { path } => Some(path),
            BackendConfig::ClickHouse { .. } => None,
        }
    }

    /// Opens (creating and migrating the tables) the configured backend.
    pub async fn open(&self) -> Result<Store> {
        match &self.backend {
            BackendConfig::Embedded { path } => Ok(Store::new(EmbeddedStore::open(path).await?)),
            BackendConfig::ClickHouse {
                url,
                database,
                user,
                password,
            } => Ok(Store::new(
                ClickHouseStore::connect(url, database, user.as_deref(), password.as_deref())
                    .await?,
            )),
        }
    }
}

impl From<InvalidSetting> for Error {
    fn from(invalid: InvalidSetting) -> Self {
        Error::Config(invalid.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> std::result::Result<StoreConfig, InvalidSetting> {
        let raw: RawStoreConfig = toml::from_str(text).unwrap();
        raw.validate(Path::new("/etc/tidewatch"))
    }

    #[test]
    fn an_embedded_path_is_relative_to_the_config_file() {
        let config = parse("type = \"embedded\"\npath = \"data/tw.db\"").unwrap();
        assert_eq!(
            config.embedded_path(),
            Some(Path::new("/etc/tidewatch/data/tw.db"))
        );
        assert_eq!(config.retry_max_delay(), Duration::from_secs(5));
    }

    #[test]
    fn invalid_settings_name_their_key() {
        let error = parse("type = \"clickhouse\"\nurl = \"127.0.0.1:8123\"").unwrap_err();
        assert_eq!(error.key, "url");
        let error =
            parse("type = \"clickhouse\"\nurl = \"http://h\"\ndatabase = \"a-b\"").unwrap_err();
        assert_eq!(error.key, "database");
        let error = parse("type = \"embedded\"\nretry_max_delay = \"0s\"").unwrap_err();
        assert_eq!(error.key, "retry_max_delay");
        let error = parse(
            "type = \"clickhouse\"\nurl = \"http://h\"\npassword_env = \"TIDEWATCH_NO_SUCH_VARIABLE\"",
        )
        .unwrap_err();
        assert_eq!(error.key, "password_env");
    }
}
