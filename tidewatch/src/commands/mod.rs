//! One module per `tidewatch` command: its arguments (clap) and what it
//! does. `main.rs` only parses the command line and dispatches here.
//!
//! | command | module |
//! |---|---|
//! | `demo` | [`demo`] |
//! | `run` | [`run`] |
//! | `serve` | [`serve`] |
//! | `replay` | [`replay`] |
//! | `reference build`, `reference list` | [`reference`] |
//! | `alerts list`, `alerts show`, `alerts test-channel` | [`alerts`] |
//! | `windows` | [`windows`] |
//! | `versions` | [`versions`] |
//! | `analyze` | [`analyze`] |
//! | `fixtures generate`, `fixtures analyze-data`, `fixtures sample` | [`fixtures`] |

pub mod alerts;
pub mod analyze;
pub mod demo;
pub mod fixtures;
pub mod reference;
pub mod replay;
pub mod run;
pub mod serve;
pub mod versions;
pub mod windows;

use std::path::PathBuf;

/// `--config`, shared by the commands that read `tidewatch.toml`.
#[derive(clap::Args, Debug, Clone)]
pub struct ConfigArg {
    /// Config file.
    #[arg(long, short, default_value = "tidewatch.toml")]
    pub config: PathBuf,
}

impl ConfigArg {
    /// Loads and validates the config file.
    pub fn load(&self) -> anyhow::Result<tidewatch::config::Config> {
        Ok(tidewatch::config::Config::load(&self.config)?)
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
