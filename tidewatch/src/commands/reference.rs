//! `tidewatch reference build` and `tidewatch reference list`.

use std::path::PathBuf;

use anyhow::Context;

/// `tidewatch reference …`.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Build a model version's reference profile from training data and store it.
    Build {
        #[command(flatten)]
        config: super::ConfigArg,
        /// Model (as configured).
        #[arg(long)]
        model: String,
        /// Model version the profile describes.
        #[arg(long)]
        version: String,
        /// Training data: .csv, .parquet, .jsonl.
        #[arg(long)]
        input: PathBuf,
        /// Also write the profile as JSON here.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// List stored reference profiles.
    List {
        #[command(flatten)]
        config: super::ConfigArg,
    },
}

/// Runs the subcommand.
pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Build {
            config,
            model,
            version,
            input,
            output,
        } => build(config, model, version, input, output).await,
        Command::List { config } => list(config).await,
    }
}

async fn build(
    config: super::ConfigArg,
    model: String,
    version: String,
    input: PathBuf,
    output: Option<PathBuf>,
) -> anyhow::Result<()> {
    let config = config.load()?;
    let spec = config.model(&model)?.clone();
    let training = tokio::task::spawn_blocking(move || {
        tidewatch::training::build_reference(&spec, &version, &input)
    })
    .await??;
    if let Some(output) = output {
        std::fs::write(&output, training.profile.to_json())
            .with_context(|| output.display().to_string())?;
    }
    let store = config.store.open().await?;
    store
        .put_reference(&training.profile, ingest::finalize::now_millis())
        .await?;
    println!(
        "stored reference of {} v{} from {} ({} rows, {} series)",
        training.profile.model,
        training.profile.model_version,
        training.profile.source,
        training.profile.row_count,
        training.profile.features.len()
    );
    if !training.ignored_columns.is_empty() {
        println!(
            "ignored columns (no such series): {}",
            training.ignored_columns.join(", ")
        );
    }
    Ok(())
}

async fn list(config: super::ConfigArg) -> anyhow::Result<()> {
    let store = config.load()?.store.open().await?;
    for summary in store.references().await? {
        println!(
            "{}\tv{}\t{}\t{} rows\tstored {}",
            summary.model,
            summary.model_version,
            summary.source,
            summary.row_count,
            tidewatch::report::format_time(summary.created_at as i64)
        );
    }
    Ok(())
}
