//! `[http]`: where the API, pages and metrics listen, the write token and
//! the limits that protect the server. [`RawHttp`] is the TOML section;
//! [`RawHttp::validate`] turns it into [`HttpSettings`], which cannot be
//! invalid.

use std::time::Duration;

use serde::Deserialize;

/// `[http]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// Address to listen on.
    #[serde(default = "default_http_listen")]
    pub listen: String,
    /// Environment variable holding the bearer token of mutating endpoints
    /// (unset: writes are disabled).
    #[serde(default)]
    pub token_env: Option<String>,
    /// Largest request body accepted (reference uploads), bytes.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Connections served at once; more are closed as they arrive.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Time a client has to send a request's headers, and at most between
    /// two parts of its body.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
}

fn default_max_connections() -> usize {
    256
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_http_listen() -> String {
    "127.0.0.1:8080".into()
}

fn default_max_body_bytes() -> usize {
    256 * 1024 * 1024
}

/// Validated `[http]`.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpSettings {
    listen: std::net::SocketAddr,
    token: Option<String>,
    max_body_bytes: usize,
    max_connections: usize,
    request_timeout: Duration,
}

/// An `[http]` setting that is not valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSetting {
    /// The key within `[http]`.
    pub key: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl RawHttp {
    /// Validates the section (the token is read from the environment).
    pub fn validate(self) -> Result<HttpSettings, InvalidSetting> {
        let invalid = |key, message: String| InvalidSetting { key, message };
        let listen = self.listen.parse().map_err(|_| {
            invalid(
                "listen",
                format!("`{}` is not an address like 127.0.0.1:8080", self.listen),
            )
        })?;
        let token = match &self.token_env {
            None => None,
            Some(variable) => Some(std::env::var(variable).map_err(|_| {
                invalid(
                    "token_env",
                    format!("environment variable `{variable}` is not set"),
                )
            })?),
        };
        if token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err(invalid(
                "token_env",
                "the token must be at least 16 characters".into(),
            ));
        }
        for (key, zero) in [
            ("max_body_bytes", self.max_body_bytes == 0),
            ("max_connections", self.max_connections == 0),
            ("request_timeout", self.request_timeout.is_zero()),
        ] {
            if zero {
                return Err(invalid(key, "must be positive".into()));
            }
        }
        Ok(HttpSettings {
            listen,
            token,
            max_body_bytes: self.max_body_bytes,
            max_connections: self.max_connections,
            request_timeout: self.request_timeout,
        })
    }
}

impl HttpSettings {
    /// Address to listen on.
    pub fn listen(&self) -> std::net::SocketAddr {
        self.listen
    }

    /// Bearer token of mutating endpoints (`None`: writes are disabled).
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Largest request body, bytes.
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// Connections served at once.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// Header read timeout, and the longest pause inside a body.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }
}
