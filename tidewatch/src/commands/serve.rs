//! `tidewatch serve`: the model gateway of `[serving]` until interrupted,
//! and with `[http]` Tidewatch's HTTP API beside it (the model registry
//! included).

use anyhow::Context;

/// Arguments of `tidewatch serve`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    config: super::ConfigArg,
}

/// Serves until Ctrl-C or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let shutdown = super::shutdown_signal();
    let config = args.config.load()?;
    let settings = config
        .serving
        .as_ref()
        .with_context(|| format!("{}: no [serving] section", config.file.display()))?;
    let kafka = config.kafka.as_ref().with_context(|| {
        format!(
            "{}: `tidewatch serve` logs every inference to the broker of [kafka], which is missing",
            config.file.display()
        )
    })?;
    let listener = tokio::net::TcpListener::bind(settings.listen())
        .await
        .with_context(|| format!("listening on {}", settings.listen()))?;
    let http = match &config.http {
        Some(http) => {
            let store = config.store.open().await?;
            Some(
                tidewatch::service::start_http(
                    &config,
                    http,
                    store,
                    tidewatch::http::Telemetry::default(),
                )
                .await?,
            )
        }
        None => None,
    };
    let telemetry = tidewatch::gateway::run(settings, kafka, listener, shutdown).await?;
    if let Some((stop, server)) = http {
        let _ = stop.send(());
        let _ = server.await;
    }
    eprintln!(
        "stopped: {} prediction events delivered, {} dropped (buffer full), {} dropped (bus errors)",
        telemetry.delivered_total(),
        telemetry.dropped_total("buffer_full"),
        telemetry.dropped_total("bus_error")
    );
    Ok(())
}
