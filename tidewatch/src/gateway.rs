//! `tidewatch serve`: the model gateway ([`serving`]) on its own listener,
//! its inference log forwarded to the broker of `[kafka]`.
//!
//! ```text
//! listener ─▶ http::serve_router(serving::gateway::router) ─▶ InferenceLog ─▶ serving::log::forward ─▶ [serving.log] topic
//!          └─ [serving.kserve] path: serving::kserve (KServe's payload logger) ─┘
//!  [serving.registry]: serving::follow — the registry's alias events move
//!  the routes; each change is published as io.tidewatch.serving.route.updated
//! ```
//!
//! In one process (`tidewatch demo --loop`) the gateway runs on the
//! [`InProcessBus`] instead: its log is published there, its routes follow
//! the registry's events there (no Seldon adapter: it reads Seldon's Kafka
//! topics).
//!
//! On shutdown the listener stops accepting, requests in flight finish
//! (within [`crate::http::DRAIN_DEADLINE`]), shadow calls still running
//! finish (within the request timeout), then the log sends what it
//! buffered (within [`serving::log::DRAIN_DEADLINE`]).

use std::future::Future;
use std::sync::Arc;

use ingest::config::KafkaSettings;
use serving::config::ServingSettings;
use serving::gateway::Gateway;
use serving::telemetry::Telemetry;

use crate::bus::InProcessBus;
use crate::http::{serve_router, ServerLimits};

/// Publishes the inference log to `topic` of the in-process bus (which
/// makes this wait when its readers are behind: the log's bounded buffer
/// then fills and drops, counted, as with a slow broker); on shutdown
/// what is buffered is published.
async fn forward_in_process(
    mut events: tokio::sync::mpsc::Receiver<serving::log::LoggedEvent>,
    bus: InProcessBus,
    topic: String,
    shutdown: impl Future<Output = ()>,
) {
    let send = |event: serving::log::LoggedEvent| {
        bus.send(ingest::channel::BusMessage {
            topic: topic.clone(),
            key: event.key,
            payload: event.payload,
        })
    };
    tokio::pin!(shutdown);
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            () = &mut shutdown => break,
        };
        let Some(event) = event else { return };
        send(event).await;
    }
    events.close();
    while let Some(event) = events.recv().await {
        send(event).await;
    }
}

/// The registry's events on the in-process bus.
struct Subscription(tokio::sync::mpsc::Receiver<ingest::channel::BusMessage>);

impl serving::follow::EventSource for Subscription {
    fn next(&mut self) -> serving::follow::NextEvent<'_> {
        Box::pin(async move { self.0.recv().await.map(|m| Ok(m.payload)) })
    }
}

/// Route changes onto the in-process bus.
struct InProcessRoutes {
    bus: InProcessBus,
    topic: String,
}

impl serving::follow::RouteSink for InProcessRoutes {
    fn publish<'a>(
        &'a self,
        update: &'a serving::routes::RouteUpdated,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            self.bus
                .send(ingest::channel::BusMessage {
                    topic: self.topic.clone(),
                    key: update.model.clone(),
                    payload: serving::follow::route_event(update)
                        .to_string()
                        .into_bytes(),
                })
                .await
        })
    }
}

/// Serves `settings` on `listener` until `shutdown`; returns the metrics
/// (for the caller's report).
pub async fn run(
    settings: &ServingSettings,
    kafka: &KafkaSettings,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Telemetry> {
    run_on(settings, GatewayBus::Kafka(kafka), listener, None, shutdown).await
}

/// The bus the gateway logs to and follows the registry on.
pub enum GatewayBus<'a> {
    /// The broker of `[kafka]`.
    Kafka(&'a KafkaSettings),
    /// The in-process bus.
    InProcess(InProcessBus),
}

/// [`run`] on `bus`, the events dated by `clock` when given (see
/// [`Gateway::with_clock`]).
pub async fn run_on(
    settings: &ServingSettings,
    bus: GatewayBus<'_>,
    listener: tokio::net::TcpListener,
    clock: Option<serving::gateway::Clock>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Telemetry> {
    let telemetry = Telemetry::default();
    let (log, events) =
        serving::log::InferenceLog::bounded(settings.log().buffer(), telemetry.clone());
    let (stop_log, log_stopped) = tokio::sync::oneshot::channel::<()>();
    let log_stopped = async move {
        let _ = log_stopped.await;
    };
    let forwarder = match &bus {
        GatewayBus::Kafka(kafka) => {
            let producer = ingest::kafka::bounded_producer(
                kafka.connection(),
                settings.log().buffer(),
                settings.log().message_timeout(),
            )?;
            tokio::spawn(serving::log::forward(
                events,
                producer,
                settings.log().topic().to_owned(),
                telemetry.clone(),
                log_stopped,
            ))
        }
        GatewayBus::InProcess(bus) => tokio::spawn(forward_in_process(
            events,
            bus.clone(),
            settings.log().topic().to_owned(),
            log_stopped,
        )),
    };
    let mut gateway = Gateway::new(
        settings.routes().clone(),
        log.clone(),
        telemetry.clone(),
        settings.max_shadow_in_flight(),
    );
    if let Some(clock) = clock {
        gateway = gateway.with_clock(clock);
    }
    let gateway = Arc::new(gateway);
    let mut app = serving::gateway::router(gateway.clone(), settings.max_body_bytes());
    if let Some(kserve) = settings.kserve() {
        let adapter = Arc::new(serving::kserve::KserveAdapter::new(
            kserve.services.clone(),
            kserve.max_pending,
            kserve.max_wait,
            log.clone(),
            telemetry.clone(),
        ));
        app = serving::kserve::router(adapter, &kserve.path)
            .layer(axum::extract::DefaultBodyLimit::max(
                settings.max_body_bytes(),
            ))
            .merge(app);
        tracing::info!(path = %kserve.path, "reading KServe's payload logger");
    }
    // Seldon's topics, read beside the gateway until it stops.
    let (stop_seldon, seldon_stopped) = tokio::sync::oneshot::channel::<()>();
    let seldon = match (settings.seldon(), &bus) {
        (Some(_), GatewayBus::InProcess(_)) => {
            anyhow::bail!("[serving.seldon] reads Seldon's Kafka topics: it needs [kafka]")
        }
        (Some(seldon), GatewayBus::Kafka(kafka)) => {
            let adapter = Arc::new(serving::seldon::SeldonAdapter::new(
                seldon.namespace.clone(),
                seldon.models.clone(),
                seldon.max_pending,
                seldon.max_wait,
                log.clone(),
                telemetry.clone(),
            ));
            let consumer = ingest::kafka::adapter_consumer(kafka.connection(), &seldon.group_id)?;
            tracing::info!(topics = ?adapter.topics(), "reading Seldon's topics");
            Some(tokio::spawn(serving::seldon::run(
                adapter,
                consumer,
                seldon.commit_interval,
                async move {
                    let _ = seldon_stopped.await;
                },
            )))
        }
        (None, _) => None,
    };
    // Routes that follow the registry's aliases.
    let (stop_follower, follower_stopped) = tokio::sync::oneshot::channel::<()>();
    let follower = match (settings.registry(), &bus) {
        (Some(follow), GatewayBus::InProcess(bus)) => {
            // Subscribed before the aliases are read (see serving::follow).
            let source = Subscription(bus.subscribe(&[follow.topic()]));
            let sink = InProcessRoutes {
                bus: bus.clone(),
                topic: follow.route_topic().to_owned(),
            };
            let (routes, url, telemetry) = (
                settings.routes().clone(),
                follow.url().to_owned(),
                telemetry.clone(),
            );
            Some(tokio::spawn(async move {
                serving::follow::follow(routes, url, source, &sink, telemetry, async move {
                    let _ = follower_stopped.await;
                })
                .await
            }))
        }
        (Some(follow), GatewayBus::Kafka(kafka)) => {
            // No group member commits or is assigned anything: each gateway
            // reads every change from where it started.
            let group = format!("tidewatch-serve-routes-{:016x}", rand::random::<u64>());
            let consumer = ingest::kafka::adapter_consumer(kafka.connection(), &group)?;
            let producer = ingest::kafka::producer(kafka.connection())?;
            tracing::info!(
                registry = follow.url(),
                topic = follow.topic(),
                "routes follow the registry"
            );
            Some(tokio::spawn(serving::follow::run(
                settings.routes().clone(),
                follow.url().to_owned(),
                consumer,
                follow.topic().to_owned(),
                producer,
                follow.route_topic().to_owned(),
                telemetry.clone(),
                async move {
                    let _ = follower_stopped.await;
                },
            )))
        }
        (None, _) => None,
    };
    tracing::info!(address = %listener.local_addr()?, topic = settings.log().topic(), "model gateway listening");
    serve_router(
        listener,
        app,
        ServerLimits {
            max_connections: settings.max_connections(),
            request_timeout: settings.request_timeout(),
        },
        shutdown,
    )
    .await?;
    let _ = stop_follower.send(());
    if let Some(follower) = follower {
        follower.await?;
    }
    let _ = stop_seldon.send(());
    if let Some(seldon) = seldon {
        if let Err(error) = seldon.await? {
            tracing::warn!(%error, "the Seldon adapter stopped with an error");
        }
    }
    // Shadow calls answer after their request: their events go in too.
    if !gateway.drain_shadows(settings.request_timeout()).await {
        tracing::warn!("shadow calls still in flight at shutdown; their events are lost");
    }
    let _ = stop_log.send(());
    forwarder.await?;
    Ok(telemetry)
}
