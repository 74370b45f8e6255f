//! The registry's outbox onto the bus: its events published in order to
//! `[registry] topic`, keyed by model name, as structured CloudEvents
//! (`content-type: application/cloudevents+json`), each marked published
//! only after the broker acknowledged it.
//!
//! At least once: an event whose acknowledgement is lost (or whose marking
//! fails) is published again with the same `id`, which consumers
//! deduplicate by. While the broker is away nothing is marked, the events
//! wait in the outbox (on disk, so a restart loses none) and the publisher
//! retries every [`RETRY_AFTER`]. Two processes serving the same registry
//! file both publish its outbox: the duplicates carry the same ids.
//!
//! Without a broker (no `[kafka]`: the demo, a laptop) the outbox is the
//! in-process bus: its lifecycle events go straight into the store's
//! `version_events` (see [`crate::lifecycle`]) and are marked published
//! once written, so the outbox stays bounded either way.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use alerting::delivery::{Bus, CLOUDEVENTS_JSON};
use registry::Registry;
use store::Store;

/// Events read from the outbox at once.
const BATCH: usize = 256;
/// How long a publish may take before it counts as failed.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Wait after a failed publish or outbox read.
pub const RETRY_AFTER: Duration = Duration::from_secs(2);
/// Longest wait between two looks at the outbox (changes made by another
/// process on the same file do not wake this one).
const POLL: Duration = Duration::from_secs(1);

/// Where the outbox goes.
pub enum Sink {
    /// The broker: every event onto `topic`, keyed by model name.
    Bus { bus: Arc<dyn Bus>, topic: String },
    /// No broker: lifecycle events into the store (the in-process bus).
    Store(Store),
}

/// Publishes `registry`'s outbox to `sink` until `shutdown` resolves;
/// returns how many events it published and counted (a batch whose marking
/// was under way when `shutdown` resolved is published but not counted:
/// the count is for reporting, the outbox is the record).
pub async fn publish(
    registry: Registry,
    sink: Sink,
    shutdown: impl Future<Output = ()> + Send,
) -> u64 {
    tokio::pin!(shutdown);
    let mut changes = registry.subscribe();
    let published = AtomicU64::new(0);
    loop {
        let outcome = tokio::select! {
            () = &mut shutdown => return published.into_inner(),
            outcome = publish_pending(&registry, &sink, &published) => outcome,
        };
        let wait = match outcome {
            Ok(0) => POLL,
            Ok(_) => continue,
            Err(error) => {
                tracing::warn!(%error, "registry events not published yet; retrying");
                RETRY_AFTER
            }
        };
        tokio::select! {
            () = &mut shutdown => return published.into_inner(),
            _ = changes.changed() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Publishes the pending events of one batch, in order, adding each one
/// published and marked to `published`; stops at the first failure.
/// `Ok(n)`: the whole batch, `n` events, published and marked.
async fn publish_pending(
    registry: &Registry,
    sink: &Sink,
    published: &AtomicU64,
) -> Result<u64, String> {
    let events = registry
        .pending_events(BATCH)
        .await
        .map_err(|e| format!("reading the outbox: {e}"))?;
    let Some(last) = events.last().map(|event| event.sequence) else {
        return Ok(0);
    };
    let (bus, topic) = match sink {
        Sink::Bus { bus, topic } => (bus, topic),
        Sink::Store(store) => {
            let rows = events
                .iter()
                .filter_map(crate::lifecycle::version_event)
                .collect::<Vec<_>>();
            if !rows.is_empty() {
                store
                    .write_version_events(rows)
                    .await
                    .map_err(|e| format!("recording version events: {e}"))?;
            }
            registry
                .mark_published(last)
                .await
                .map_err(|e| format!("marking events up to {last} published: {e}"))?;
            published.fetch_add(events.len() as u64, Ordering::Relaxed);
            return Ok(events.len() as u64);
        }
    };
    let count = events.len() as u64;
    for event in events {
        let payload = event.cloud_event().to_string().into_bytes();
        let headers = vec![("content-type", CLOUDEVENTS_JSON.to_owned())];
        tokio::time::timeout(
            SEND_TIMEOUT,
            bus.publish(topic, &event.change.model, payload, headers),
        )
        .await
        .map_err(|_| {
            format!(
                "event {} not acknowledged within {SEND_TIMEOUT:?}",
                event.sequence
            )
        })?
        .map_err(|e| format!("event {}: {e}", event.sequence))?;
        registry
            .mark_published(event.sequence)
            .await
            .map_err(|e| format!("marking event {} published: {e}", event.sequence))?;
        published.fetch_add(1, Ordering::Relaxed);
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::sync::atomic::AtomicBool;
    use std::sync::Mutex;

    /// A bus that fails while `down` is set and records what it took; a
    /// send of an event whose id is in `lose` (each entry once) is written
    /// but answered with an error (an acknowledgement lost in flight).
    #[derive(Default)]
    struct FakeBus {
        down: AtomicBool,
        lose: Mutex<Vec<String>>,
        sent: Mutex<Vec<(String, String, serde_json::Value)>>,
    }

    impl Bus for FakeBus {
        fn publish<'a>(
            &'a self,
            topic: &'a str,
            key: &'a str,
            payload: Vec<u8>,
            _headers: Vec<(&'static str, String)>,
        ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
            Box::pin(async move {
                if self.down.load(Ordering::SeqCst) {
                    return Err("broker down".into());
                }
                let document: serde_json::Value = serde_json::from_slice(&payload).unwrap();
                let id = document["id"].as_str().unwrap().to_owned();
                self.sent
                    .lock()
                    .unwrap()
                    .push((topic.to_owned(), key.to_owned(), document));
                let mut lose = self.lose.lock().unwrap();
                if let Some(at) = lose.iter().position(|lost| *lost == id) {
                    lose.remove(at);
                    return Err("acknowledgement lost".into());
                }
                Ok(())
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn events_wait_while_the_bus_is_down_and_go_out_in_order_after() {
        let registry = Registry::in_memory().unwrap();
        let bus = Arc::new(FakeBus::default());
        bus.down.store(true, Ordering::SeqCst);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let publisher = tokio::spawn(publish(
            registry.clone(),
            Sink::Bus {
                bus: bus.clone(),
                topic: "registry-events".into(),
            },
            async {
                let _ = stopped.await;
            },
        ));
        registry
            .create_model("churn".into(), vec![], "".into())
            .await
            .unwrap();
        for _ in 0..3 {
            registry
                .create_version(registry::store::NewVersion {
                    name: "churn".into(),
                    source: "s3://m".into(),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(bus.sent.lock().unwrap().is_empty());
        assert_eq!(registry.pending_count().await.unwrap(), 4, "nothing marked");

        bus.down.store(false, Ordering::SeqCst);
        tokio::time::sleep(RETRY_AFTER * 2).await;
        assert_eq!(registry.pending_count().await.unwrap(), 0);
        registry
            .set_alias("churn".into(), "champion".into(), "2".into())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.send(()).unwrap();
        assert_eq!(publisher.await.unwrap(), 5);
        let sent = bus.sent.lock().unwrap();
        let ids: Vec<&str> = sent
            .iter()
            .map(|(_, _, e)| e["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["1", "2", "3", "4", "5"]);
        assert!(sent
            .iter()
            .all(|(topic, key, _)| topic == "registry-events" && key == "churn"));
        assert_eq!(
            sent[4].2["type"],
            "io.tidewatch.registry.model_version_alias.created"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_event_whose_acknowledgement_is_lost_is_sent_again_with_its_id_and_recorded_once() {
        let registry = Registry::in_memory().unwrap();
        let bus = Arc::new(FakeBus::default());
        registry
            .create_model("churn".into(), vec![], "".into())
            .await
            .unwrap();
        registry
            .create_version(registry::store::NewVersion {
                name: "churn".into(),
                source: "s3://m".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        registry
            .set_alias("churn".into(), "champion".into(), "1".into())
            .await
            .unwrap();
        // The version's event loses its answer twice.
        *bus.lose.lock().unwrap() = vec!["2".into(), "2".into()];
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let publisher = tokio::spawn(publish(
            registry.clone(),
            Sink::Bus {
                bus: bus.clone(),
                topic: "registry-events".into(),
            },
            async {
                let _ = stopped.await;
            },
        ));
        while registry.pending_count().await.unwrap() > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop.send(()).unwrap();
        assert_eq!(publisher.await.unwrap(), 3);
        assert_eq!(registry.pending_count().await.unwrap(), 0);
        let sent = bus.sent.lock().unwrap().clone();
        let ids: Vec<&str> = sent
            .iter()
            .map(|(_, _, e)| e["id"].as_str().unwrap())
            .collect();
        // Every event went out, the version's three times, always with
        // its own id and in order.
        assert_eq!(ids, ["1", "2", "2", "2", "3"]);

        // What a consumer records of them: each lifecycle event once.
        let store = store::Store::in_memory().unwrap();
        let events: Vec<store::VersionEvent> = sent
            .iter()
            .filter_map(|(_, _, document)| {
                registry::events::RegistryEvent::from_cloud_event(document)
            })
            .filter_map(|event| crate::lifecycle::version_event(&event))
            .collect();
        assert_eq!(events.len(), 4, "{events:?}");
        store.write_version_events(events).await.unwrap();
        let recorded = store.version_events("churn", 100).await.unwrap();
        assert_eq!(recorded.len(), 2, "registered, champion: {recorded:?}");
    }
}
