//! `tidewatch windows`: the stored drift table of a model.

/// Arguments of `tidewatch windows`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    config: super::ConfigArg,
    /// Model.
    #[arg(long)]
    model: String,
    /// Segment.
    #[arg(long, default_value = "all")]
    segment: String,
}

/// Prints the table.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = args.config.load()?;
    let spec = config.model(&args.model)?;
    let series: Vec<String> = spec.series().map(|s| s.name.clone()).collect();
    let store = config.store.open().await?;
    let metrics = store
        .window_metrics(store::MetricsQuery {
            model: Some(args.model),
            ..Default::default()
        })
        .await?;
    print!(
        "{}",
        tidewatch::report::drift_table(&metrics, &args.segment, &series)
    );
    Ok(())
}
