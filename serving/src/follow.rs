//! Routes that follow the model registry (`[serving.registry]`): the
//! registry's aliases decide which version answers.
//!
//! ```text
//!  start: assign the registry topic at its end offsets ─▶ read each served
//!         model's aliases from the registry API (registered-models/get)
//!  then:  io.tidewatch.registry.model_version_alias.created|deleted
//!           ─▶ RouteTable::apply_alias ─▶ io.tidewatch.serving.route.updated
//! ```
//!
//! Taking the end offsets before reading the aliases means no change made
//! in between is missed (one may be applied twice, which changes nothing).
//! The consumer belongs to no group and commits nothing: every gateway
//! instance reads every change. `champion` names the version that answers,
//! `challenger` a challenger taking part as the model's challenger policy
//! says (`challenger_mode`, `canary_share`), `shadow` a shadow challenger;
//! other aliases do not route. An alias naming a version the gateway does
//! not serve yet is loaded first from the version's `source` in the
//! registry (`model-versions/get`; a local ONNX or `tidewatch.linear.v1`
//! file, see [`crate::load`]), on the blocking pool; a version that cannot
//! be loaded is refused (logged and counted) and the route stays as it was.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use registry::events::{ChangeKind, RegistryEvent};
use serde_json::Value;

use crate::routes::{RouteTable, RouteUpdated, CHALLENGER_ALIAS, CHAMPION_ALIAS, SHADOW_ALIAS};
use crate::telemetry::Telemetry;
use crate::Error;

/// Time allowed for a metadata, watermark or registry call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The `adapter` label of the route follower's counters.
const ADAPTER: &str = "registry";

/// GETs `path` of the registry API at `url`: the answer, `None` when the
/// registry does not have the resource.
async fn registry_get(
    url: &str,
    path: &str,
    query: &[(&str, &str)],
) -> Result<Option<Value>, Error> {
    let (status, answer) = registry::client::MlflowClient::new(url)
        .get(path, query)
        .await
        .map_err(|e| Error::Unreachable(e.to_string()))?;
    if status == 404 && answer["error_code"] == "RESOURCE_DOES_NOT_EXIST" {
        return Ok(None);
    }
    if !(200..300).contains(&status) {
        return Err(Error::Upstream {
            status,
            message: answer["message"].as_str().unwrap_or_default().to_owned(),
        });
    }
    Ok(Some(answer))
}

/// The aliases of `model` in the registry at `url`; `None` when the model
/// is not registered there.
pub async fn registry_aliases(
    url: &str,
    model: &str,
) -> Result<Option<Vec<(String, String)>>, Error> {
    registry::client::MlflowClient::new(url)
        .aliases(model)
        .await
        .map_err(|e| Error::Unreachable(e.to_string()))
}

/// Applies a registered model's aliases to its route: the routing aliases
/// it has are set, those it lacks are cleared (the champion stays).
pub fn apply_snapshot(
    routes: &RouteTable,
    model: &str,
    aliases: &[(String, String)],
) -> Vec<Result<RouteUpdated, Error>> {
    let mut changes = Vec::new();
    for alias in [CHAMPION_ALIAS, CHALLENGER_ALIAS, SHADOW_ALIAS] {
        let version = aliases
            .iter()
            .find(|(name, _)| name == alias)
            .map(|(_, version)| version.as_str());
        match routes.apply_alias(model, alias, version) {
            Ok(Some(update)) => changes.push(Ok(update)),
            Ok(None) => {}
            Err(error) => changes.push(Err(error)),
        }
    }
    changes
}

/// Applies one registry event (a CloudEvent document); `Ok(None)` when it
/// does not move a route. A version it routes to is loaded first when the
/// gateway does not serve it (see the module docs).
pub async fn apply_event(
    routes: &RouteTable,
    url: &str,
    document: &Value,
) -> Result<Option<RouteUpdated>, Error> {
    let Some(event) = RegistryEvent::from_cloud_event(document) else {
        return Ok(None);
    };
    let alias = event.change.data["alias"].as_str().unwrap_or_default();
    match event.change.kind {
        ChangeKind::ModelVersionAliasCreated => {
            let version = event.change.version.as_deref();
            if let (true, Some(version)) = (routes_traffic(alias), version) {
                ensure_loaded(routes, url, &event.change.model, version).await?;
            }
            routes.apply_alias(&event.change.model, alias, version)
        }
        ChangeKind::ModelVersionAliasDeleted => {
            routes.apply_alias(&event.change.model, alias, None)
        }
        _ => Ok(None),
    }
}

/// Whether `alias` sends a version traffic.
fn routes_traffic(alias: &str) -> bool {
    [CHAMPION_ALIAS, CHALLENGER_ALIAS, SHADOW_ALIAS].contains(&alias)
}

/// A registered version's `source` and tags, read at `url`; `None` when the
/// registry does not have it.
pub async fn registry_version(
    url: &str,
    model: &str,
    version: &str,
) -> Result<Option<(String, Vec<(String, String)>)>, Error> {
    let Some(answer) = registry_get(
        url,
        "model-versions/get",
        &[("name", model), ("version", version)],
    )
    .await?
    else {
        return Ok(None);
    };
    let version = &answer["model_version"];
    let source = version["source"].as_str().unwrap_or_default().to_owned();
    let tags = version["tags"]
        .as_array()
        .map(|tags| {
            tags.iter()
                .filter_map(|tag| {
                    Some((
                        tag["key"].as_str()?.to_owned(),
                        tag["value"].as_str()?.to_owned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Some((source, tags)))
}

/// Loads `version` of `model` from its registered `source` unless the
/// gateway serves it already (or serves no such model: the alias is then
/// ignored or refused by the route table).
pub async fn ensure_loaded(
    routes: &RouteTable,
    url: &str,
    model: &str,
    version: &str,
) -> Result<(), Error> {
    if routes.serves(model, version) {
        return Ok(());
    }
    let Some(context) = routes.loader(model) else {
        return Ok(());
    };
    let (source, tags) = registry_version(url, model, version)
        .await?
        .ok_or_else(|| {
            Error::NotFound(format!(
                "version {version} of `{model}` is not in the registry"
            ))
        })?;
    let served = tokio::task::spawn_blocking(move || context.load_registered(&source, &tags))
        .await
        .map_err(|e| Error::Internal(format!("loading a model: {e}")))?
        .map_err(|e| Error::InvalidSetting(format!("version {version} of `{model}`: {e}")))?;
    routes.add_version(model, version, served)
}

/// Assigns `consumer` every partition of `topic` at its end offset.
/// Blocking calls run with [`tokio::task::block_in_place`] (a
/// multi-threaded runtime is needed).
pub fn assign_at_end(consumer: &StreamConsumer, topic: &str) -> Result<usize, Error> {
    tokio::task::block_in_place(|| {
        let metadata = consumer
            .fetch_metadata(Some(topic), CALL_TIMEOUT)
            .map_err(|e| Error::Unreachable(format!("metadata of {topic}: {e}")))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        let mut assignment = TopicPartitionList::new();
        for partition in &partitions {
            let (_, high) = consumer
                .fetch_watermarks(topic, *partition, CALL_TIMEOUT)
                .map_err(|e| Error::Unreachable(format!("offsets of {topic}/{partition}: {e}")))?;
            assignment
                .add_partition_offset(topic, *partition, Offset::Offset(high))
                .map_err(|e| Error::Internal(e.to_string()))?;
        }
        consumer
            .assign(&assignment)
            .map_err(|e| Error::Internal(format!("assigning {topic}: {e}")))?;
        Ok(partitions.len())
    })
}

/// What [`EventSource::next`] answers.
pub type NextEvent<'a> = Pin<Box<dyn Future<Output = Option<Result<Vec<u8>, String>>> + Send + 'a>>;

/// Where the follower reads the registry's events.
pub trait EventSource: Send {
    /// The next event's payload; `None` when the source has ended, `Err`
    /// when reading failed (tried again).
    fn next(&mut self) -> NextEvent<'_>;
}

/// Where the follower announces route changes
/// (`io.tidewatch.serving.route.updated`).
pub trait RouteSink: Send + Sync {
    /// Publishes the CloudEvent of `update` (a failure is logged: the route
    /// moved already).
    fn publish<'a>(
        &'a self,
        update: &'a RouteUpdated,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
}

/// A consumer of the registry topic.
struct KafkaSource(StreamConsumer);

impl EventSource for KafkaSource {
    fn next(&mut self) -> NextEvent<'_> {
        Box::pin(async move {
            Some(match self.0.recv().await {
                Ok(message) => Ok(message.payload().unwrap_or_default().to_vec()),
                Err(error) => Err(error.to_string()),
            })
        })
    }
}

/// A producer onto the route topic.
struct KafkaRouteSink {
    producer: FutureProducer,
    topic: String,
}

impl RouteSink for KafkaRouteSink {
    fn publish<'a>(
        &'a self,
        update: &'a RouteUpdated,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let payload = route_event(update).to_string();
            let record = FutureRecord::to(&self.topic)
                .key(&update.model)
                .payload(&payload)
                .headers(
                    rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
                        key: "content-type",
                        value: Some("application/cloudevents+json; charset=utf-8"),
                    }),
                );
            if let Err((error, _)) = self.producer.send(record, CALL_TIMEOUT).await {
                tracing::warn!(%error, model = %update.model, "a route change was applied but not published");
            }
        })
    }
}

/// The CloudEvent announcing `update`, with a fresh id.
pub fn route_event(update: &RouteUpdated) -> Value {
    let id = format!("{:032x}", rand::random::<u128>());
    update.cloud_event(&id, crate::log::now_ms())
}

/// Reports one outcome of the follower.
async fn report(
    outcome: Result<Option<RouteUpdated>, Error>,
    sink: &dyn RouteSink,
    telemetry: &Telemetry,
) {
    match outcome {
        Ok(Some(update)) => {
            telemetry.adapter_event(ADAPTER, "route_updated");
            sink.publish(&update).await;
        }
        Ok(None) => telemetry.adapter_event(ADAPTER, "ignored"),
        Err(error) => {
            telemetry.adapter_event(ADAPTER, "route_refused");
            tracing::warn!(%error, "a registry alias was not applied to the routes");
        }
    }
}

/// Follows the registry until `shutdown`: `consumer` is assigned the end
/// of `topic` (retried until the topic exists), then [`follow`] reads the
/// aliases at `url` and applies every alias change on the topic. Route
/// changes are published to `route_topic`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    routes: Arc<RouteTable>,
    url: String,
    consumer: StreamConsumer,
    topic: String,
    producer: FutureProducer,
    route_topic: String,
    telemetry: Telemetry,
    shutdown: impl Future<Output = ()> + Send,
) {
    tokio::pin!(shutdown);
    let mut warned = false;
    loop {
        match assign_at_end(&consumer, &topic) {
            Ok(partitions) if partitions > 0 => break,
            Ok(_) if !warned => {
                tracing::info!(
                    topic,
                    "the registry topic does not exist yet; waiting for it"
                );
                warned = true;
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, topic, "cannot read the registry topic yet"),
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    let sink = KafkaRouteSink {
        producer,
        topic: route_topic,
    };
    follow(
        routes,
        url,
        KafkaSource(consumer),
        &sink,
        telemetry,
        shutdown,
    )
    .await
}

/// Reads each served model's aliases at `url` and applies them, then
/// applies every alias change `source` reads, until `shutdown` or the end
/// of `source`. The source must be positioned before the aliases are read
/// (no change made in between is missed; one may be applied twice, which
/// changes nothing).
pub async fn follow(
    routes: Arc<RouteTable>,
    url: String,
    mut source: impl EventSource,
    sink: &dyn RouteSink,
    telemetry: Telemetry,
    shutdown: impl Future<Output = ()> + Send,
) {
    tokio::pin!(shutdown);
    let models: Vec<String> = routes.models().iter().map(|m| m.name.clone()).collect();
    for model in &models {
        // The registry may start after the gateway: retry until it answers.
        loop {
            let aliases = tokio::select! {
                () = &mut shutdown => return,
                aliases = registry_aliases(&url, model) => aliases,
            };
            match aliases {
                Ok(Some(aliases)) => {
                    for (alias, version) in &aliases {
                        if routes_traffic(alias) {
                            if let Err(error) = ensure_loaded(&routes, &url, model, version).await {
                                tracing::warn!(%error, model, alias, version, "a version the registry routes to could not be loaded");
                            }
                        }
                    }
                    for change in apply_snapshot(&routes, model, &aliases) {
                        report(change.map(Some), sink, &telemetry).await;
                    }
                    break;
                }
                Ok(None) => {
                    tracing::info!(model, "not registered: the configured route stays until the registry names versions");
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, model, "the registry did not answer; retrying");
                    tokio::select! {
                        () = &mut shutdown => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }
    loop {
        let message = tokio::select! {
            () = &mut shutdown => return,
            message = source.next() => message,
        };
        match message {
            None => return,
            Some(Ok(payload)) => {
                let Ok(document) = serde_json::from_slice::<Value>(&payload) else {
                    telemetry.adapter_event(ADAPTER, "undecodable");
                    continue;
                };
                report(
                    apply_event(&routes, &url, &document).await,
                    sink,
                    &telemetry,
                )
                .await;
            }
            Some(Err(error)) => {
                tracing::warn!(%error, "reading the registry's events failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
