//! `tidewatch demo`: the whole pipeline in one process on the bundled
//! fixture stream, optionally serving its pages afterwards.

use std::path::PathBuf;

use anyhow::Context;
use tidewatch::fixtures::DemoShape;

/// Arguments of `tidewatch demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
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
    /// Run the closed loop instead: drift, a retrain request, a trained
    /// challenger in shadow, its promotion, on simulated hours through the
    /// gateway, the monitor, the trainer and the registry in this process
    /// (files in WORKDIR/loop). With `--serve` its pages stay up on
    /// `--listen`.
    #[arg(long = "loop")]
    closed_loop: bool,
    /// With `--loop`: answer retrain requests with a deliberately bad
    /// trainer (plugged into the bus as one's own would be), to see the
    /// promotion policy reject its version.
    #[arg(long, requires = "closed_loop")]
    bad_trainer: bool,
    /// With `--loop`: run the challenger as a canary answering this share
    /// of requests (in (0, 1]) instead of in shadow.
    #[arg(long, requires = "closed_loop")]
    canary: Option<f64>,
    /// Where `--serve` listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
}

/// Runs the demo.
pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.closed_loop {
        let options = tidewatch::demo_loop::Options {
            workdir: args.workdir.join("loop"),
            seed: args.seed,
            transport: tidewatch::demo_loop::Transport::InProcess,
            trainer: if args.bad_trainer {
                tidewatch::demo_loop::Trainer::Bad
            } else {
                tidewatch::demo_loop::Trainer::Reference
            },
            listen: args.serve.then_some(args.listen),
            canary_share: args.canary,
            token: std::env::var("TIDEWATCH_API_TOKEN")
                .ok()
                .filter(|token| !token.is_empty()),
        };
        let serve = args.serve;
        tidewatch::demo_loop::run(
            options,
            |outcome| {
                print!("{}", outcome.report);
                if serve {
                    println!(
                        "\nTidewatch pages: http://{}/models/{} (API: http://{}/api/v1/models/{}/timeline); Ctrl-C stops",
                        outcome.http,
                        tidewatch::demo_loop::MODEL,
                        outcome.http,
                        tidewatch::demo_loop::MODEL
                    );
                }
            },
            async move {
                if serve {
                    super::shutdown_signal().await;
                }
            },
        )
        .await?;
        return Ok(());
    }
    let outcome = tidewatch::demo::run(&args.workdir, args.seed, DemoShape::full()).await?;
    print!("{}", outcome.report);
    if !args.serve {
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}", args.listen))?;
    let address = listener.local_addr()?;
    // The registry beside the demo's store; writes (the mlflow client's
    // too) take TIDEWATCH_API_TOKEN as their bearer token.
    let registry_path = args.workdir.join("registry.sqlite");
    let registry = registry::Registry::open(&registry_path)
        .await
        .with_context(|| format!("opening the registry {}", registry_path.display()))?;
    // No broker in the demo: the registry's outbox is the in-process bus,
    // its lifecycle events recorded in the store for the pages.
    let (stop_publisher, publisher_stopped) = tokio::sync::oneshot::channel::<()>();
    let publisher = tokio::spawn(tidewatch::registry_bus::publish(
        registry.clone(),
        tidewatch::registry_bus::Sink::Store(outcome.store.clone()),
        async {
            let _ = publisher_stopped.await;
        },
    ));
    let mut state = tidewatch::demo::http_state(outcome.store);
    state.registry = Some(registry);
    state.token = std::env::var("TIDEWATCH_API_TOKEN")
        .ok()
        .filter(|token| !token.is_empty());
    println!(
        "\nTidewatch pages: http://{address}/models/{} (API: http://{address}/api/v1/models, metrics: http://{address}/metrics, \
         model registry: MLFLOW_TRACKING_URI=http://{address}{}); Ctrl-C stops",
        tidewatch::fixtures::DEMO_MODEL,
        if state.token.is_some() { "" } else { ", read-only: set TIDEWATCH_API_TOKEN to write" }
    );
    tidewatch::http::serve(
        listener,
        std::sync::Arc::new(state),
        super::shutdown_signal(),
    )
    .await?;
    let _ = stop_publisher.send(());
    let _ = publisher.await;
    Ok(())
}
