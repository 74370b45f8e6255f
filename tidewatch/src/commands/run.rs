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
    let config = args.config.load()?;
    let report = tidewatch::service::run(&config, super::shutdown_signal()).await?;
    eprintln!("stopped: {report:?}");
    Ok(())
}
