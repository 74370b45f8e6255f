//! `tidewatch run`: consume the configured topics into the configured store
//! until interrupted.

/// Arguments of `tidewatch run`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    config: super::ConfigArg,
}

/// Runs the service until Ctrl-C or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    // Before anything else: a SIGTERM during start-up stops the service
    // once it is up, rather than killing it mid-step.
    let shutdown = super::shutdown_signal();
    let config = args.config.load()?;
    let report = tidewatch::service::run(&config, shutdown).await?;
    eprintln!("stopped: {report:?}");
    Ok(())
}
