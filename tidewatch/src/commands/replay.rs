//! `tidewatch replay`: produce a JSON-lines file to a topic, one message per
//! line, as JSON or re-encoded as Protocol Buffers.

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
    /// Send each line as it is (`json`) or as a `tidewatch.v1.Event`
    /// message (`protobuf`; a line that does not decode is sent as it is).
    #[arg(long, value_enum, default_value = "json")]
    encoding: Encoding,
    /// The kind of a line without `schema`, when re-encoding.
    #[arg(long, value_enum, default_value = "prediction")]
    kind: Kind,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Encoding {
    Json,
    Protobuf,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Kind {
    Prediction,
    Feature,
    Actual,
}

/// Replays the file.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let connection = ingest::config::BrokerConnection::new(args.to)
        .map_err(|error| anyhow::anyhow!("--to: {}", error.message))?;
    let options = ingest::kafka::ReplayOptions {
        topic: args.topic.clone(),
        rate: args.rate,
        encoding: match args.encoding {
            Encoding::Json => events::Encoding::Json,
            Encoding::Protobuf => events::Encoding::Protobuf,
        },
        kind: match args.kind {
            Kind::Prediction => events::EventKind::Prediction,
            Kind::Feature => events::EventKind::Feature,
            Kind::Actual => events::EventKind::Actual,
        },
    };
    let delivered = ingest::kafka::replay_file(&connection, &args.file, &options)
        .await
        .with_context(|| format!("replaying {} to {}", args.file.display(), args.topic))?;
    println!("delivered {delivered} messages to {}", args.topic);
    Ok(())
}
