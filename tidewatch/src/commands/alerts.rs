//! `tidewatch alerts list`, `show` and `test-channel`.

/// `tidewatch alerts …`.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// List recorded notifications, newest first.
    List {
        #[command(flatten)]
        config: super::ConfigArg,
        /// Only this model.
        #[arg(long)]
        model: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u64,
    },
    /// Send a test message to a configured channel, to check its configuration.
    TestChannel {
        #[command(flatten)]
        config: super::ConfigArg,
        /// Channel name (as in `[[alerts.channels]]`).
        name: String,
    },
    /// Show one alert's notifications (JSON).
    Show {
        #[command(flatten)]
        config: super::ConfigArg,
        /// Alert id.
        id: String,
    },
}

/// Runs the subcommand.
pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::List {
            config,
            model,
            limit,
        } => list(config, model, limit).await,
        Command::TestChannel { config, name } => test_channel(config, name).await,
        Command::Show { config, id } => show(config, id).await,
    }
}

async fn list(config: super::ConfigArg, model: Option<String>, limit: u64) -> anyhow::Result<()> {
    let store = config.load()?.store.open().await?;
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
    Ok(())
}

async fn test_channel(config: super::ConfigArg, name: String) -> anyhow::Result<()> {
    let config = config.load()?;
    // The test message is sent directly; no store is opened or written.
    let sender = tidewatch::service::sender(&config, store::Store::in_memory()?)?;
    match sender
        .send_test(&name, ingest::finalize::now_millis())
        .await
    {
        Ok(()) => {
            println!("test message delivered to channel `{name}`");
            Ok(())
        }
        Err(error) => anyhow::bail!("channel `{name}`: {error}"),
    }
}

async fn show(config: super::ConfigArg, id: String) -> anyhow::Result<()> {
    let store = config.load()?.store.open().await?;
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
    Ok(())
}
