//! The `tidewatch` command line. See `tidewatch --help` and README.md.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tidewatch::config::Config;
use tidewatch::fixtures::{self, DemoShape};

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
    Demo {
        /// Where the generated stream, training data and embedded store go.
        #[arg(long, default_value = ".tidewatch/demo")]
        workdir: PathBuf,
        /// Seed of the fixture generator.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Keep serving Tidewatch's pages, API and metrics over the demo's
        /// store until interrupted.
        #[arg(long)]
        serve: bool,
        /// Where `--serve` listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
    /// Consume the configured Kafka topics into the configured store until interrupted.
    Run {
        /// Config file.
        #[arg(long, short, default_value = "tidewatch.toml")]
        config: PathBuf,
    },
    /// Produce a JSON-lines file to a Kafka topic, one message per line.
    Replay {
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
    },
    /// Reference profiles.
    Reference {
        #[command(subcommand)]
        command: ReferenceCommand,
    },
    /// Recorded alerts.
    Alerts {
        #[command(subcommand)]
        command: AlertsCommand,
    },
    /// Print the stored drift table of a model.
    Windows {
        /// Config file.
        #[arg(long, short, default_value = "tidewatch.toml")]
        config: PathBuf,
        /// Model.
        #[arg(long)]
        model: String,
        /// Segment.
        #[arg(long, default_value = "all")]
        segment: String,
    },
    /// Compare a current data file with a reference file, chunk by chunk, with every drift test.
    Analyze {
        /// Reference data (.csv, .parquet, .arrow, .jsonl).
        #[arg(long)]
        reference: PathBuf,
        /// Current data.
        #[arg(long)]
        current: PathBuf,
        /// Chunks of this many rows (default: the whole file is one chunk).
        #[arg(long, conflicts_with = "chunk_period")]
        chunk_size: Option<usize>,
        /// Chunks of this period (`1h`, `1d`…) by --timestamp-column.
        #[arg(long, requires = "timestamp_column", value_parser = humantime::parse_duration)]
        chunk_period: Option<std::time::Duration>,
        /// Timestamp column for --chunk-period.
        #[arg(long)]
        timestamp_column: Option<String>,
        /// Only these columns (comma-separated).
        #[arg(long, value_delimiter = ',')]
        columns: Option<Vec<String>>,
        /// Columns to treat as numeric (comma-separated).
        #[arg(long, value_delimiter = ',')]
        numeric: Vec<String>,
        /// Columns to treat as categorical (comma-separated).
        #[arg(long, value_delimiter = ',')]
        categorical: Vec<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Test that decides whether a column drifted (psi, ks, chi_square, jensen_shannon, hellinger, kl_divergence, wasserstein_normalized, any).
        #[arg(long, default_value = "psi")]
        decide_by: String,
        /// Exit with status 1 when any column drifted (for CI pipelines).
        #[arg(long)]
        fail_on_drift: bool,
        /// PSI threshold.
        #[arg(long, default_value_t = 0.2)]
        psi_threshold: f64,
        /// Significance level of the KS and chi-square tests.
        #[arg(long, default_value_t = 0.05)]
        alpha: f64,
        /// Cap on each sample size in the KS p-value.
        #[arg(long)]
        ks_sample_cap: Option<u64>,
        /// NannyML-style bands: flag a chunk whose PSI, Jensen-Shannon, normalized Wasserstein or mean leaves mean ± K·σ over reference chunks of the same size.
        #[arg(long, value_name = "K")]
        bands: Option<f64>,
    },
    /// Fixture files.
    Fixtures {
        #[command(subcommand)]
        command: FixturesCommand,
    },
}

#[derive(Subcommand)]
enum AlertsCommand {
    /// List recorded notifications, newest first.
    List {
        /// Config file.
        #[arg(long, short, default_value = "tidewatch.toml")]
        config: PathBuf,
        /// Only this model.
        #[arg(long)]
        model: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u64,
    },
    /// Send a test message to a configured channel, to check its configuration.
    TestChannel {
        /// Config file.
        #[arg(long, short, default_value = "tidewatch.toml")]
        config: PathBuf,
        /// Channel name (as in `[[alerts.channels]]`).
        name: String,
    },
    /// Show one alert's notifications (JSON).
    Show {
        /// Config file.
        #[arg(long, short, default_value = "tidewatch.toml")]
        config: PathBuf,
        /// Alert id.
        id: String,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Table,
    Json,
    Csv,
}

#[derive(Subcommand)]
enum ReferenceCommand {
    /// Build a model version's reference profile from training data and store it.
    Build {
        /// Config file.
        #[arg(long, short, default_value = "tidewatch.toml")]
        config: PathBuf,
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
        /// Config file.
        #[arg(long, short, default_value = "tidewatch.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum FixturesCommand {
    /// Write the full demo stream and training data.
    Generate {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Write reference.parquet and current.parquet for the analyze benchmark.
    AnalyzeData {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Rows per file.
        #[arg(long, default_value_t = 1_000_000)]
        rows: usize,
        /// Numeric columns.
        #[arg(long, default_value_t = 20)]
        columns: usize,
        /// Seed.
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Rewrite the small committed samples (fixtures/demo-sample*.{jsonl,csv}).
    Sample {
        /// Output directory.
        #[arg(long, default_value = "fixtures")]
        out: PathBuf,
    },
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
    runtime.block_on(async_main(cli))
}

async fn async_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo {
            workdir,
            seed,
            serve,
            listen,
        } => {
            let outcome = tidewatch::demo::run(&workdir, seed, DemoShape::full()).await?;
            print!("{}", outcome.report);
            if serve {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("--listen {listen}"))?;
                let address = listener.local_addr()?;
                println!(
                    "\nTidewatch pages: http://{address}/models/{} (API: http://{address}/api/v1/models, metrics: http://{address}/metrics); Ctrl-C stops",
                    tidewatch::fixtures::DEMO_MODEL
                );
                tidewatch::http::serve(
                    listener,
                    std::sync::Arc::new(tidewatch::demo::http_state(outcome.store)),
                    shutdown_signal(),
                )
                .await?;
            }
        }
        Command::Run { config } => {
            let config = Config::load(&config)?;
            let report = tidewatch::service::run(&config, shutdown_signal()).await?;
            eprintln!("stopped: {report:?}");
        }
        Command::Replay {
            file,
            to,
            topic,
            rate,
        } => {
            let connection = ingest::config::BrokerConnection::new(to)
                .map_err(|error| anyhow::anyhow!("--to: {}", error.message))?;
            let options = ingest::kafka::ReplayOptions {
                topic: topic.clone(),
                rate,
            };
            let delivered = ingest::kafka::replay_file(&connection, &file, &options)
                .await
                .with_context(|| format!("replaying {} to {topic}", file.display()))?;
            println!("delivered {delivered} messages to {topic}");
        }
        Command::Reference {
            command:
                ReferenceCommand::Build {
                    config,
                    model,
                    version,
                    input,
                    output,
                },
        } => {
            let config = Config::load(&config)?;
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
        }
        Command::Reference {
            command: ReferenceCommand::List { config },
        } => {
            let config = Config::load(&config)?;
            let store = config.store.open().await?;
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
        }
        Command::Alerts {
            command:
                AlertsCommand::List {
                    config,
                    model,
                    limit,
                },
        } => {
            let config = Config::load(&config)?;
            let store = config.store.open().await?;
            for alert in store.alerts(model.as_deref(), limit).await? {
                println!(
                    "{}\t{}\t{}\t{} UTC\t{}",
                    alert.id,
                    alert.status,
                    alert.severity,
                    tidewatch::report::format_time(alert.window_start),
                    alert.summary
                );
            }
        }
        Command::Alerts {
            command: AlertsCommand::TestChannel { config, name },
        } => {
            let config = Config::load(&config)?;
            // The test message is sent directly; no store is opened or written.
            let store = store::Store::new(store::embedded::EmbeddedStore::in_memory()?);
            let sender = tidewatch::service::sender(&config, store)?;
            match sender
                .send_test(&name, ingest::finalize::now_millis())
                .await
            {
                Ok(()) => println!("test message delivered to channel `{name}`"),
                Err(error) => anyhow::bail!("channel `{name}`: {error}"),
            }
        }
        Command::Alerts {
            command: AlertsCommand::Show { config, id },
        } => {
            let config = Config::load(&config)?;
            let store = config.store.open().await?;
            let notifications = store.alert_notifications(&id).await?;
            if notifications.is_empty() {
                anyhow::bail!("no alert with id `{id}`");
            }
            for alert in notifications {
                println!("{}", alert.payload);
            }
            for delivery in store.deliveries(&id).await? {
                let error = if delivery.last_error.is_empty() {
                    String::new()
                } else {
                    format!("\tlast error: {}", delivery.last_error)
                };
                println!(
                    "delivery\t{} {} UTC\t{}\t{}\t{} attempt(s){error}",
                    delivery.status,
                    tidewatch::report::format_time(delivery.window_start),
                    delivery.channel,
                    match delivery.state {
                        store::DeliveryState::Failed => "gave up",
                        state => state.as_str(),
                    },
                    delivery.attempts,
                );
            }
        }
        Command::Windows {
            config,
            model,
            segment,
        } => {
            let config = Config::load(&config)?;
            let spec = config.model(&model)?;
            let series: Vec<String> = spec.series().map(|s| s.name.clone()).collect();
            let store = config.store.open().await?;
            let metrics = store
                .window_metrics(store::MetricsQuery {
                    model: Some(model),
                    ..Default::default()
                })
                .await?;
            print!(
                "{}",
                tidewatch::report::drift_table(&metrics, &segment, &series)
            );
        }
        Command::Analyze {
            reference,
            current,
            chunk_size,
            chunk_period,
            timestamp_column,
            columns,
            numeric,
            categorical,
            format,
            decide_by,
            fail_on_drift,
            psi_threshold,
            alpha,
            ks_sample_cap,
            bands,
        } => {
            use tidewatch::analyze::{self, AnalyzeOptions, Chunking};
            let chunking = match (chunk_size, chunk_period, timestamp_column) {
                (Some(rows), _, _) => Chunking::Rows(rows),
                (None, Some(period), Some(column)) => Chunking::Period {
                    millis: period.as_millis() as i64,
                    column,
                },
                _ => Chunking::Whole,
            };
            let options = AnalyzeOptions {
                reference,
                current,
                chunking,
                columns,
                numeric,
                categorical,
                thresholds: detectors::metrics::DriftThresholds {
                    psi: psi_threshold,
                    alpha,
                    ks_sample_cap,
                    ..Default::default()
                },
                decide_by,
                bands,
            };
            let report = tokio::task::spawn_blocking(move || {
                let bar = indicatif::ProgressBar::new(0);
                bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                let report = analyze::analyze(&options, |done, total| {
                    if total > 1 {
                        bar.set_length(total as u64);
                        bar.set_position(done as u64);
                    }
                });
                bar.finish_and_clear();
                report
            })
            .await??;
            let text = match format {
                Format::Table => analyze::render_table(&report),
                Format::Json => analyze::render_json(&report),
                Format::Csv => analyze::render_csv(&report),
            };
            print!("{text}");
            if fail_on_drift && report.any_drift() {
                std::process::exit(1);
            }
        }
        Command::Fixtures {
            command: FixturesCommand::Generate { out, seed },
        } => {
            let generated = fixtures::generate(DemoShape::full(), seed);
            std::fs::create_dir_all(&out)?;
            std::fs::write(out.join("stream.jsonl"), generated.stream)?;
            std::fs::write(out.join("train.csv"), generated.training_csv)?;
            println!(
                "wrote {} predictions and {} actuals to {}",
                generated.predictions,
                generated.actuals,
                out.display()
            );
        }
        Command::Fixtures {
            command:
                FixturesCommand::AnalyzeData {
                    out,
                    rows,
                    columns,
                    seed,
                },
        } => {
            fixtures::write_analyze_data(&out, rows, columns, seed)?;
            println!("wrote reference.parquet and current.parquet ({rows} rows x {columns} columns) to {}", out.display());
        }
        Command::Fixtures {
            command: FixturesCommand::Sample { out },
        } => {
            let generated = fixtures::generate(DemoShape::sample(), 42);
            std::fs::write(out.join("demo-sample.jsonl"), generated.stream)?;
            std::fs::write(out.join("demo-sample-train.csv"), generated.training_csv)?;
            println!("wrote samples to {}", out.display());
        }
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
