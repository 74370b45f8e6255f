//! The consumer loop over an in-process bus: what [`crate::kafka::run`]
//! does for a broker, for messages handed over a bounded channel (the
//! demo's one-process loop, where the gateway, the monitor and the trainer
//! share one bus without Kafka).
//!
//! ```text
//! bounded mpsc (BusMessage) ─▶ Driver::ingest ─▶ (malformed) ─▶ dead letters
//!                                   │ after each batch
//!                                   ▼
//!        Driver::checkpoint (store) ─▶ Driver::finalize_closed ─▶ WindowObserver
//! ```
//!
//! Each topic is one source, its offsets the messages' positions on it.
//! There is nothing to commit: a message is handed over once and the loop
//! stores what it read before it reports the batch done. A full channel
//! makes the sender wait (the bus's back-pressure); nothing is dropped.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use events::EventKind;
use tokio::sync::mpsc;

use crate::dead_letter::DeadLetterSink;
use crate::driver::{Driver, SourceMessage};
use crate::engine::Ingested;
use crate::kafka::{RunReport, WindowObserver};
use crate::Error;

/// One message of the in-process bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusMessage {
    /// The topic it was published to.
    pub topic: String,
    /// Its key.
    pub key: String,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// Messages taken from the channel before the loop checkpoints.
const BATCH: usize = 1024;

/// The loop's settings.
#[derive(Debug, Clone)]
pub struct ChannelSettings {
    /// The event kind assumed per topic for payloads without a `schema`.
    pub kinds: HashMap<String, EventKind>,
    /// Close every window when no message arrived for this long.
    pub idle_close_after: Option<Duration>,
    /// How often stored references are looked for.
    pub reference_refresh: Duration,
}

/// Reads `messages` into `driver` until `shutdown` resolves (or every
/// sender is gone), then closes and finalizes every window. `processed`
/// counts the messages whose batch is stored and whose closed windows are
/// finalized and observed: a caller that knows how many it sent can wait
/// for the loop to catch up.
pub async fn run(
    mut driver: Driver,
    mut messages: mpsc::Receiver<BusMessage>,
    settings: ChannelSettings,
    mut dead_letters: DeadLetterSink,
    processed: Arc<AtomicU64>,
    shutdown: impl Future<Output = ()>,
    mut observer: impl WindowObserver,
) -> Result<RunReport, Error> {
    tokio::pin!(shutdown);
    let mut report = RunReport::default();
    let mut offsets: HashMap<String, u64> = HashMap::new();
    let mut refresh = tokio::time::interval(settings.reference_refresh);
    refresh.tick().await;
    // Idleness is measured from the last message (a reference refresh in
    // between does not restart it); windows held are closed once.
    let mut last_message = tokio::time::Instant::now();
    let mut idle_closed = false;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let idle_deadline = match settings.idle_close_after {
            Some(idle) if !idle_closed => Some(last_message + idle),
            _ => None,
        };
        let idle = async {
            match idle_deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut shutdown => break,
            _ = refresh.tick() => {
                driver.refresh_references().await?;
                continue;
            }
            () = idle => {
                driver.close_all();
                finalize(&mut driver, &mut observer, &mut report).await?;
                idle_closed = true;
                continue;
            }
            received = messages.recv_many(&mut batch, BATCH) => {
                if received == 0 {
                    break;
                }
                last_message = tokio::time::Instant::now();
                idle_closed = false;
            }
        }
        let count = batch.len() as u64;
        for message in batch.drain(..) {
            let offset = offsets.entry(message.topic.clone()).or_insert(0);
            let kind = settings
                .kinds
                .get(&message.topic)
                .copied()
                .unwrap_or(EventKind::Prediction);
            let source = SourceMessage {
                source: &message.topic,
                topic: &message.topic,
                partition: 0,
                offset: *offset,
                payload: &message.payload,
                format: kind.into(),
            };
            *offset += 1;
            report.messages += 1;
            if let Ingested::Malformed(_) = driver.ingest(source, &mut dead_letters).await? {
                report.dead_lettered += 1;
            }
        }
        // Stores the batch, then finalizes what it closed.
        finalize(&mut driver, &mut observer, &mut report).await?;
        processed.fetch_add(count, Ordering::SeqCst);
    }
    driver.close_all();
    finalize(&mut driver, &mut observer, &mut report).await?;
    Ok(report)
}

/// Stores what was read, finalizes the windows it closed and tells
/// `observer`, in order.
async fn finalize(
    driver: &mut Driver,
    observer: &mut impl WindowObserver,
    report: &mut RunReport,
) -> Result<(), Error> {
    let (_, finalized) = driver.finalize_closed().await?;
    for (model, window_start, metrics) in &finalized.windows {
        observer.finalized(model, *window_start, metrics).await?;
        report.windows_finalized += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Engine, EngineSettings};
    use detectors::catalog::Catalog;
    use detectors::spec::{FeatureKind, FeatureSpec, ModelSpec, Task};
    use detectors::window::WindowSize;
    use std::sync::Mutex;

    struct Windows(Arc<Mutex<Vec<i64>>>);

    impl WindowObserver for Windows {
        async fn finalized(
            &mut self,
            _model: &str,
            window_start: i64,
            _metrics: &[store::WindowMetrics],
        ) -> Result<(), Error> {
            self.0.lock().unwrap().push(window_start);
            Ok(())
        }
    }

    const HOUR: i64 = 3_600_000;
    const START: i64 = 1_767_225_600_000;

    /// A driver over an in-memory store for one classifier `m` with one
    /// numeric feature `x`.
    async fn driver() -> (Driver, store::Store) {
        let spec = ModelSpec::new(
            "m",
            Task::Classification,
            vec![FeatureSpec {
                name: "x".into(),
                kind: FeatureKind::Numeric,
            }],
            Vec::new(),
            10,
            10,
        )
        .unwrap();
        let engine = Engine::new(
            EngineSettings::new(WindowSize::from_millis(HOUR).unwrap()),
            Catalog::new([spec]),
        );
        let store = store::Store::in_memory().unwrap();
        let driver = crate::driver::test_driver(engine, store.clone()).await;
        (driver, store)
    }

    /// A prediction of `m` on topic `p`.
    fn event(id: &str, time: i64) -> BusMessage {
        BusMessage {
            topic: "p".into(),
            key: id.into(),
            payload: format!(
                r#"{{"schema":"tidewatch.prediction.v1","model":"m","model_version":"1","prediction_id":"{id}","timestamp":{time},"features":{{"x":1.5}},"prediction":{{"score":0.7,"class":"yes"}}}}"#
            )
            .into_bytes(),
        }
    }

    #[tokio::test]
    async fn idleness_closes_the_windows_even_while_references_are_refreshed() {
        let (driver, _store) = driver().await;
        let (sender, receiver) = mpsc::channel(4);
        sender.send(event("p0", START)).await.unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let processed = Arc::new(AtomicU64::new(0));
        let directory =
            std::env::temp_dir().join(format!("tw-channel-idle-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let task = tokio::spawn(run(
            driver,
            receiver,
            ChannelSettings {
                kinds: [("p".to_owned(), EventKind::Prediction)].into(),
                idle_close_after: Some(Duration::from_millis(300)),
                // Refreshed four times within one idle period.
                reference_refresh: Duration::from_millis(60),
            },
            DeadLetterSink::file(&directory.join("dead-letters.jsonl")).unwrap(),
            Arc::clone(&processed),
            std::future::pending(),
            Windows(Arc::clone(&seen)),
        ));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while seen.lock().unwrap().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the idle window was never closed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(*seen.lock().unwrap(), [START]);
        drop(sender);
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn messages_are_stored_counted_finalized_in_order_and_the_malformed_dead_lettered() {
        let (driver, store) = driver().await;
        let (hour, start) = (HOUR, START);
        let (sender, receiver) = mpsc::channel(16);
        for (i, time) in [
            start,
            start + 60_000,
            start + 120_000,
            start + hour + 600_000,
        ]
        .into_iter()
        .enumerate()
        {
            sender.send(event(&format!("p{i}"), time)).await.unwrap();
        }
        sender
            .send(BusMessage {
                topic: "p".into(),
                key: "bad".into(),
                payload: b"{not json".to_vec(),
            })
            .await
            .unwrap();
        let directory = std::env::temp_dir().join(format!("tw-channel-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let letters = directory.join("dead-letters.jsonl");
        let _ = std::fs::remove_file(&letters);
        let processed = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(run(
            driver,
            receiver,
            ChannelSettings {
                kinds: [("p".to_owned(), EventKind::Prediction)].into(),
                idle_close_after: None,
                reference_refresh: Duration::from_secs(60),
            },
            DeadLetterSink::file(&letters).unwrap(),
            Arc::clone(&processed),
            std::future::pending(),
            Windows(Arc::clone(&seen)),
        ));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while processed.load(Ordering::SeqCst) < 5 {
            assert!(
                std::time::Instant::now() < deadline,
                "the loop never caught up"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Read and stored: the first window (passed by the last event) is
        // finalized before the count says so.
        assert_eq!(*seen.lock().unwrap(), [start]);
        drop(sender);
        let report = task.await.unwrap().unwrap();
        assert_eq!(report.messages, 5);
        assert_eq!(report.dead_lettered, 1);
        assert_eq!(*seen.lock().unwrap(), [start, start + hour]);
        let count = store
            .window_metrics(store::MetricsQuery {
                model: Some("m".into()),
                feature: Some("x".into()),
                ..Default::default()
            })
            .await
            .unwrap()
            .iter()
            .map(|m| m.metrics.count)
            .collect::<Vec<_>>();
        assert_eq!(count, [3, 1]);
        let letters = std::fs::read_to_string(&letters).unwrap();
        assert_eq!(letters.lines().count(), 1);
        assert!(letters.contains("\"offset\":4"), "{letters}");
    }
}
