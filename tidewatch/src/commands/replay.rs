//! `tidewatch replay`: produce a JSON-lines file to a topic, one message per
//! line.

use std::path::PathBuf;

use anyhow::Context;

/// Arguments of `tidewatch replay`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The file.
    file: PathBuf,
    /// Broker list (bootstrap.servers).
    #[arg(long)]
    to: String,
    /// Topic.
    #[arg(long)]
    topic: String,
    /// Messages per second (default: as fast as possible).
    #[arg(long)]
    rate: Option<u32>,
}

/// Replays the file.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let connection = ingest::config::BrokerConnection::new(args.to)
        .map_err(|error| anyhow::anyhow!("--to: {}", error.message))?;
    let options = ingest::kafka::ReplayOptions {
        topic: args.topic.clone(),
        rate: args.rate,
    };
    let delivered = ingest::kafka::replay_file(&connection, &args.file, &options)
        .await
        .with_context(|| format!("replaying {} to {}", args.file.display(), args.topic))?;
    println!("delivered {delivered} messages to {}", args.topic);
    Ok(())
}
