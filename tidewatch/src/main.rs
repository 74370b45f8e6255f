//! The `tidewatch` command line. See `tidewatch --help` and README.md.
//!
//! This file only parses the command line and dispatches; each command is a
//! module of [`commands`].

mod commands;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tidewatch",
    version,
    about = "Streaming ML monitoring and drift detection"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole pipeline in one process on a bundled fixture stream (no Kafka, no ClickHouse).
    Demo(commands::demo::Args),
    /// Consume the configured Kafka topics into the configured store until interrupted.
    Run(commands::run::Args),
    /// Serve the models of [serving] over the Open Inference Protocol, logging every inference to Kafka.
    Serve(commands::serve::Args),
    /// Produce a JSON-lines file to a Kafka topic, one message per line.
    Replay(commands::replay::Args),
    /// Reference profiles.
    #[command(subcommand)]
    Reference(commands::reference::Command),
    /// Recorded alerts.
    #[command(subcommand)]
    Alerts(commands::alerts::Command),
    /// Print the stored drift table of a model.
    Windows(commands::windows::Args),
    /// A model's timeline: versions, aliases, retraining, promotion decisions.
    Versions(commands::versions::Args),
    /// Compare a current data file with a reference file, chunk by chunk, with every drift test.
    Analyze(Box<commands::analyze::Args>),
    /// Fixture files.
    #[command(subcommand)]
    Fixtures(commands::fixtures::Command),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "tidewatch=info,ingest=info,warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(dispatch(cli.command));
    // Blocking tasks still running (a librdkafka close past its deadline)
    // do not hold the exit.
    runtime.shutdown_timeout(SHUTDOWN_TIMEOUT);
    outcome
}

/// How long the exit waits for blocking tasks still running.
const SHUTDOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Demo(args) => commands::demo::run(args).await,
        Command::Run(args) => commands::run::run(args).await,
        Command::Serve(args) => commands::serve::run(args).await,
        Command::Replay(args) => commands::replay::run(args).await,
        Command::Reference(command) => commands::reference::run(command).await,
        Command::Alerts(command) => commands::alerts::run(command).await,
        Command::Windows(args) => commands::windows::run(args).await,
        Command::Versions(args) => commands::versions::run(args).await,
        Command::Analyze(args) => commands::analyze::run(*args).await,
        Command::Fixtures(command) => commands::fixtures::run(command),
    }
}
