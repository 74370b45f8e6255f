//! `tidewatch versions`: a model's timeline — versions registered, their
//! references, aliases, retrain requests, trainings and promotion
//! decisions — from the store (what `tidewatch run` recorded).

/// Arguments of `tidewatch versions`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    config: super::ConfigArg,
    /// Model.
    #[arg(long)]
    model: String,
}

/// Prints the timeline.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = args.config.load()?;
    let store = config.store.open().await?;
    let (timeline, truncated) = tidewatch::lifecycle::load(&store, &args.model).await?;
    print!(
        "{}",
        tidewatch::lifecycle::render_text(&args.model, &timeline, truncated)
    );
    Ok(())
}
