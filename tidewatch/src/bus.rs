//! The bus the parts of Tidewatch talk over: Kafka in production, or an
//! in-process bus when everything runs in one process (`tidewatch demo
//! --loop`).
//!
//! ```text
//!  publishers (alert outbox, registry outbox, trainer acks, promotion
//!  decisions, gateway inference log, label feed)
//!        │ Bus::publish(topic, key, payload)
//!        ▼
//!  InProcessBus ──▶ journal (last JOURNAL_CAPACITY messages, for reading back)
//!        └──────▶ each subscriber of the topic: bounded channel (SUBSCRIBER_CAPACITY);
//!                 full: the publisher waits; subscriber gone: it is forgotten
//! ```
//!
//! A subscriber sees every message published to its topics after it
//! subscribed, in publish order; the parts are wired (subscribed) before
//! anything is published, which stands in for Kafka's "read from the
//! beginning". [`Feed`] is what a follower reads: a Kafka topic or an
//! in-process subscription, with the same batch callback.

use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use ingest::channel::BusMessage;
use tokio::sync::mpsc;

/// Messages kept for [`InProcessBus::journal`]; beyond it the oldest is
/// forgotten (the subscribers have them already).
pub const JOURNAL_CAPACITY: usize = 100_000;
/// Messages waiting for one subscriber before publishers wait.
pub const SUBSCRIBER_CAPACITY: usize = 4096;

struct Subscriber {
    topics: BTreeSet<String>,
    sender: mpsc::Sender<BusMessage>,
}

#[derive(Default)]
struct Inner {
    subscribers: Vec<Subscriber>,
    journal: VecDeque<BusMessage>,
    /// Messages published so far (the journal may have forgotten some).
    published: u64,
}

/// An in-process bus. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct InProcessBus {
    inner: Arc<Mutex<Inner>>,
}

impl InProcessBus {
    /// A bus with no subscriber.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every message published to one of `topics` from now on.
    pub fn subscribe(&self, topics: &[&str]) -> mpsc::Receiver<BusMessage> {
        let (sender, receiver) = mpsc::channel(SUBSCRIBER_CAPACITY);
        self.lock().subscribers.push(Subscriber {
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            sender,
        });
        receiver
    }

    /// [`InProcessBus::subscribe`] to one topic, as a [`Feed`].
    pub fn feed(&self, topic: &str) -> Feed {
        Feed::InProcess(self.subscribe(&[topic]))
    }

    /// The messages of `topic` still in the journal, oldest first.
    pub fn journal(&self, topic: &str) -> Vec<BusMessage> {
        self.lock()
            .journal
            .iter()
            .filter(|m| m.topic == topic)
            .cloned()
            .collect()
    }

    /// Messages published so far.
    pub fn published(&self) -> u64 {
        self.lock().published
    }

    /// Publishes one message: journaled, then handed to each subscriber of
    /// its topic (waiting while one's channel is full).
    pub async fn send(&self, message: BusMessage) {
        let senders: Vec<mpsc::Sender<BusMessage>> = {
            let mut inner = self.lock();
            inner.published += 1;
            if inner.journal.len() == JOURNAL_CAPACITY {
                inner.journal.pop_front();
            }
            inner.journal.push_back(message.clone());
            inner.subscribers.retain(|s| !s.sender.is_closed());
            inner
                .subscribers
                .iter()
                .filter(|s| s.topics.contains(&message.topic))
                .map(|s| s.sender.clone())
                .collect()
        };
        for sender in senders {
            // A subscriber gone since is skipped (it stopped reading).
            let _ = sender.send(message.clone()).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl alerting::delivery::Bus for InProcessBus {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        key: &'a str,
        payload: Vec<u8>,
        _headers: Vec<(&'static str, String)>,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            self.send(BusMessage {
                topic: topic.to_owned(),
                key: key.to_owned(),
                payload,
            })
            .await;
            Ok(())
        })
    }
}

/// What a follower reads: a Kafka topic (from its beginning, in no
/// consumer group: see [`ingest::kafka::follow_topic`]) or an in-process
/// subscription.
pub enum Feed {
    /// A topic on the broker of `settings`.
    Kafka {
        settings: ingest::config::KafkaSettings,
        topic: String,
    },
    /// A subscription to the in-process bus.
    InProcess(mpsc::Receiver<BusMessage>),
}

impl Feed {
    /// A Kafka topic.
    pub fn kafka(settings: &ingest::config::KafkaSettings, topic: &str) -> Self {
        Feed::Kafka {
            settings: settings.clone(),
            topic: topic.to_owned(),
        }
    }

    /// The topic's name (for logs).
    pub fn describe(&self) -> String {
        match self {
            Feed::Kafka { topic, .. } => topic.clone(),
            Feed::InProcess(_) => "the in-process bus".into(),
        }
    }

    /// Hands the payloads to `on_batch`, at most `batch` at once, until
    /// `shutdown` resolves (or, in process, the bus is gone).
    pub async fn follow<F, Fut>(
        self,
        batch: usize,
        mut on_batch: F,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ingest::Error>
    where
        F: FnMut(Vec<Vec<u8>>) -> Fut,
        Fut: Future<Output = ()>,
    {
        match self {
            Feed::Kafka { settings, topic } => {
                ingest::kafka::follow_topic(&settings, &topic, batch, on_batch, shutdown).await
            }
            Feed::InProcess(mut receiver) => {
                tokio::pin!(shutdown);
                let mut messages = Vec::with_capacity(batch);
                loop {
                    let received = tokio::select! {
                        () = &mut shutdown => return Ok(()),
                        received = receiver.recv_many(&mut messages, batch.max(1)) => received,
                    };
                    if received == 0 {
                        return Ok(());
                    }
                    let payloads = messages.drain(..).map(|m| m.payload).collect();
                    on_batch(payloads).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alerting::delivery::Bus;

    #[tokio::test]
    async fn subscribers_get_their_topics_in_order_and_the_journal_keeps_everything() {
        let bus = InProcessBus::new();
        let mut both = bus.subscribe(&["a", "b"]);
        let mut only_b = bus.subscribe(&["b"]);
        for (topic, payload) in [("a", "1"), ("b", "2"), ("c", "3"), ("a", "4")] {
            bus.publish(topic, "k", payload.as_bytes().to_vec(), Vec::new())
                .await
                .unwrap();
        }
        let mut got = Vec::new();
        both.recv_many(&mut got, 10).await;
        let got: Vec<&[u8]> = got.iter().map(|m| m.payload.as_slice()).collect();
        assert_eq!(got, [b"1", b"2", b"4"]);
        assert_eq!(only_b.recv().await.unwrap().payload, b"2");
        assert!(only_b.try_recv().is_err());
        assert_eq!(bus.journal("c").len(), 1);
        assert_eq!(bus.published(), 4);
    }

    #[tokio::test]
    async fn a_full_subscriber_makes_the_publisher_wait_and_a_gone_one_is_dropped() {
        let bus = InProcessBus::new();
        let mut slow = bus.subscribe(&["t"]);
        drop(bus.subscribe(&["t"]));
        for i in 0..SUBSCRIBER_CAPACITY {
            bus.publish("t", "k", i.to_string().into_bytes(), Vec::new())
                .await
                .unwrap();
        }
        let publisher = {
            let bus = bus.clone();
            tokio::spawn(async move { bus.publish("t", "k", b"last".to_vec(), Vec::new()).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!publisher.is_finished(), "the publisher waits for room");
        assert_eq!(slow.recv().await.unwrap().payload, b"0");
        publisher.await.unwrap().unwrap();
        let mut rest = Vec::new();
        slow.recv_many(&mut rest, SUBSCRIBER_CAPACITY + 1).await;
        assert_eq!(rest.last().unwrap().payload, b"last");
        assert_eq!(bus.lock().subscribers.len(), 1);
    }
}
