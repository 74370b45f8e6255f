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

/// A future that resolves on Ctrl-C or SIGTERM, with both handlers
/// installed when this is called (not when the future is first polled): a
/// signal during start-up then stops the command once it is ready to stop,
/// instead of killing the process between two steps. Call it first thing.
/// Must be called within the runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
        let mut terminate = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
        async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
