//! Delivery from the outbox to a real HTTP receiver on 127.0.0.1: a channel
//! that is down gets the alert once it is back, a restarted sender repeats
//! nothing, a channel down for good ends failed, and the other channel is
//! not held up. The receiver verifies the webhook signature.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use alerting::delivery::{Channel, ChannelKind, RetryPolicy, Sender, ALERT_ID_HEADER};
use alerting::lifecycle::{Alert, AlertEvaluator, AlertStatus};
use alerting::payload::{verify, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use alerting::rules::default_rules;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use detectors::metrics::{DriftThresholds, FeatureWindowMetrics};
use detectors::spec::FeatureKind;
use detectors::SeriesKey;
use store::{Store, WindowMetrics};

const SECRET: &[u8] = b"webhook-secret";

#[derive(Default)]
struct Receiver {
    /// Requests to refuse before accepting.
    refuse: AtomicUsize,
    /// Status of a refusal (503 when unset).
    refuse_with: Mutex<Option<(StatusCode, Option<&'static str>)>>,
    /// (alert id header, body, signature valid) of every request.
    requests: Mutex<Vec<(String, Vec<u8>, bool)>>,
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, HeaderMap) {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let timestamp: u64 = header(TIMESTAMP_HEADER).parse().unwrap_or(0);
    let valid = verify(
        SECRET,
        timestamp,
        &body,
        &header(SIGNATURE_HEADER),
        timestamp,
        300,
    );
    receiver
        .requests
        .lock()
        .unwrap()
        .push((header(ALERT_ID_HEADER), body.to_vec(), valid));
    if receiver.refuse.load(Ordering::SeqCst) > 0 {
        receiver.refuse.fetch_sub(1, Ordering::SeqCst);
        let (status, retry_after) = receiver
            .refuse_with
            .lock()
            .unwrap()
            .unwrap_or((StatusCode::SERVICE_UNAVAILABLE, None));
        let mut headers = HeaderMap::new();
        if let Some(retry_after) = retry_after {
            headers.insert("retry-after", retry_after.parse().unwrap());
        }
        return (status, headers);
    }
    (StatusCode::OK, HeaderMap::new())
}

/// A receiver on 127.0.0.1 refusing its first `refuse` requests.
async fn start_receiver(refuse: usize) -> (String, Arc<Receiver>) {
    let receiver = Arc::new(Receiver {
        refuse: AtomicUsize::new(refuse),
        ..Default::default()
    });
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(Arc::clone(&receiver));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{address}/hook"), receiver)
}

fn drifted_window() -> Vec<WindowMetrics> {
    ["a", "b", "c"]
        .iter()
        .map(|feature| {
            let mut metrics = FeatureWindowMetrics::empty(
                FeatureKind::Numeric,
                500,
                0,
                0,
                DriftThresholds::default(),
            );
            metrics.psi = Some(0.5);
            metrics.drifted = Some(true);
            WindowMetrics {
                key: SeriesKey {
                    window_start: 1_767_621_600_000,
                    model: "churn".into(),
                    model_version: "7".into(),
                    segment: "all".into(),
                    feature: (*feature).into(),
                },
                window_end: 1_767_625_200_000,
                metrics,
                reference_source: None,
                version: 1,
            }
        })
        .collect()
}

async fn recorded_alert(store: &Store, channels: &[&str]) -> Alert {
    let mut evaluator = AlertEvaluator::new(default_rules(&[]));
    let alert = evaluator.evaluate("churn", &drifted_window()).remove(0);
    assert_eq!(alert.status, AlertStatus::Firing);
    let channels = channels.iter().map(|c| (*c).to_owned()).collect();
    store
        .record_alerts(vec![(alert.to_record(1_000), channels)])
        .await
        .unwrap();
    alert
}

fn policy(max_attempts: u32) -> RetryPolicy {
    policy_with_timeout(max_attempts, std::time::Duration::from_secs(10))
}

fn policy_with_timeout(max_attempts: u32, timeout: std::time::Duration) -> RetryPolicy {
    RetryPolicy::new(
        max_attempts,
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(60),
        timeout,
    )
    .unwrap()
}

#[tokio::test]
async fn a_channel_that_was_down_gets_the_alert_once_and_a_restart_repeats_nothing() {
    let store = Store::in_memory().unwrap();
    let (url, receiver) = start_receiver(2).await;
    let (healthy_url, healthy) = start_receiver(0).await;
    let alert = recorded_alert(&store, &["hook", "healthy"]).await;
    let channels = || {
        vec![
            Channel::new(
                "hook".into(),
                ChannelKind::Webhook(alerting::delivery::Endpoint {
                    url: url.clone(),
                    secret: Some(SECRET.to_vec()),
                    ca_pem: None,
                }),
                "k",
            )
            .unwrap(),
            Channel::new(
                "healthy".into(),
                ChannelKind::Webhook(alerting::delivery::Endpoint {
                    url: healthy_url.clone(),
                    secret: Some(SECRET.to_vec()),
                    ca_pem: None,
                }),
                "k",
            )
            .unwrap(),
        ]
    };
    let sender = Sender::new(store.clone(), channels(), policy(5)).unwrap();

    // t = 1 s: the hook is down, the healthy channel is not held up.
    let first = sender.deliver_due(1_000).await.unwrap();
    assert_eq!((first.sent, first.retried, first.failed), (1, 1, 0));
    assert_eq!(
        sender.deliver_due(1_200).await.unwrap().sent
            + sender.deliver_due(1_200).await.unwrap().retried,
        0,
        "not due yet"
    );
    // Still down at its retry, up at the next.
    assert_eq!(sender.deliver_due(10_000).await.unwrap().retried, 1);
    assert_eq!(sender.deliver_due(100_000).await.unwrap().sent, 1);

    // A new sender (a restart) finds nothing left to send.
    let restarted = Sender::new(store.clone(), channels(), policy(5)).unwrap();
    assert_eq!(
        restarted.deliver_due(1_000_000).await.unwrap(),
        Default::default()
    );

    let requests = receiver.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 3, "two refused attempts, one accepted");
    let key = format!("{}:firing:{}", alert.id, alert.window_start);
    assert!(
        requests.iter().all(|(id, _, valid)| id == &key && *valid),
        "same key, valid signatures"
    );
    assert!(
        requests.iter().all(|(_, body, _)| body == &requests[0].1),
        "the same body every time"
    );
    let delivered: serde_json::Value = serde_json::from_slice(&requests[0].1).unwrap();
    assert_eq!(delivered["id"], alert.id.as_str());
    assert_eq!(delivered["findings"].as_array().unwrap().len(), 3);
    assert_eq!(healthy.requests.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_channel_down_for_good_ends_failed() {
    let store = Store::in_memory().unwrap();
    let (url, receiver) = start_receiver(usize::MAX).await;
    recorded_alert(&store, &["hook"]).await;
    let channel = Channel::new(
        "hook".into(),
        ChannelKind::Webhook(alerting::delivery::Endpoint {
            url,
            secret: None,
            ca_pem: None,
        }),
        "k",
    )
    .unwrap();
    let sender = Sender::new(store.clone(), vec![channel], policy(3)).unwrap();
    let mut failed = 0;
    for step in 0..10u64 {
        failed += sender
            .deliver_due(1_000 + step * 120_000)
            .await
            .unwrap()
            .failed;
    }
    assert_eq!(failed, 1);
    assert_eq!(
        receiver.requests.lock().unwrap().len(),
        3,
        "max_attempts requests, then no more"
    );
    assert!(store
        .due_deliveries(u64::MAX >> 1, 10)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_channel_that_hangs_costs_one_timeout_per_pass_and_holds_up_no_other() {
    let store = Store::in_memory().unwrap();
    // Accepts connections and never answers.
    let hanging = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hanging_url = format!("http://{}/hook", hanging.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = hanging.accept().await {
            held.push(stream);
        }
    });
    let (healthy_url, healthy) = start_receiver(0).await;
    // Three notifications (windows 1, 2 and 3 of one drift) for both channels.
    let alert = recorded_alert(&store, &["hanging", "healthy"]).await;
    for window in 1..3 {
        let mut later = alert.clone();
        later.window_start += window * 3_600_000;
        later.repeat = true;
        store
            .record_alerts(vec![(
                later.to_record(1_000),
                vec!["hanging".into(), "healthy".into()],
            )])
            .await
            .unwrap();
    }
    let channel = |name: &str, url: &str| {
        Channel::new(
            name.into(),
            ChannelKind::Webhook(alerting::delivery::Endpoint {
                url: url.into(),
                secret: None,
                ca_pem: None,
            }),
            "k",
        )
        .unwrap()
    };
    let sender = Sender::new(
        store.clone(),
        vec![
            channel("hanging", &hanging_url),
            channel("healthy", &healthy_url),
        ],
        policy_with_timeout(5, std::time::Duration::from_millis(300)),
    )
    .unwrap();
    let report = sender.deliver_due(1_000).await.unwrap();
    assert_eq!(report.channels["healthy"].sent, 3);
    assert_eq!(
        report.channels["hanging"].retried, 1,
        "one attempt, then the channel waits for the next pass"
    );
    assert_eq!(healthy.requests.lock().unwrap().len(), 3);
    let due = store.due_deliveries(u64::MAX >> 1, 10).await.unwrap();
    let attempts: Vec<u32> = due.iter().map(|d| d.attempts).collect();
    assert_eq!(due.len(), 3, "the hanging channel's three are still due");
    assert_eq!(attempts.iter().filter(|a| **a == 1).count(), 1);
    assert!(due.iter().any(|d| d.last_error == "timed out"));
}

fn webhook(name: &str, url: &str) -> Channel {
    Channel::new(
        name.into(),
        ChannelKind::Webhook(alerting::delivery::Endpoint {
            url: url.into(),
            secret: Some(SECRET.to_vec()),
            ca_pem: None,
        }),
        "k",
    )
    .unwrap()
}

#[tokio::test]
async fn a_permanent_refusal_gives_up_at_once_and_retry_after_is_honoured() {
    let store = Store::in_memory().unwrap();
    let (gone_url, gone) = start_receiver(usize::MAX).await;
    *gone.refuse_with.lock().unwrap() = Some((StatusCode::NOT_FOUND, None));
    let (busy_url, busy) = start_receiver(1).await;
    *busy.refuse_with.lock().unwrap() = Some((StatusCode::TOO_MANY_REQUESTS, Some("120")));
    let alert = recorded_alert(&store, &["gone", "busy"]).await;
    let sender = Sender::new(
        store.clone(),
        vec![webhook("gone", &gone_url), webhook("busy", &busy_url)],
        policy(10),
    )
    .unwrap();
    let report = sender.deliver_due(1_000).await.unwrap();
    assert_eq!((report.sent, report.retried, report.failed), (0, 1, 1));
    let deliveries = store.deliveries(&alert.id).await.unwrap();
    let gone_delivery = deliveries.iter().find(|d| d.channel == "gone").unwrap();
    assert_eq!(gone_delivery.state, store::DeliveryState::Failed);
    assert_eq!(gone_delivery.attempts, 1, "a 404 is not retried");
    assert_eq!(
        gone_delivery.last_error,
        "gave up: not retryable: HTTP 404 Not Found"
    );
    let busy_delivery = deliveries.iter().find(|d| d.channel == "busy").unwrap();
    assert_eq!(busy_delivery.state, store::DeliveryState::Pending);
    assert_eq!(
        busy_delivery.next_attempt_at,
        1_000 + 120_000,
        "Retry-After (120 s) outweighs the first backoff (< 1 s)"
    );
    // Nothing more is tried before then.
    let report = sender.deliver_due(100_000).await.unwrap();
    assert_eq!(report.sent + report.retried + report.failed, 0);
    let report = sender.deliver_due(121_000).await.unwrap();
    assert_eq!(report.sent, 1);
    assert_eq!(gone.requests.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_resolution_never_overtakes_the_firing_it_resolves() {
    let store = Store::in_memory().unwrap();
    // The channel is down for the first two attempts.
    let (url, receiver) = start_receiver(2).await;
    let firing = recorded_alert(&store, &["hook"]).await;
    let sender = Sender::new(store.clone(), vec![webhook("hook", &url)], policy(10)).unwrap();
    assert_eq!(sender.deliver_due(1_000).await.unwrap().retried, 1);
    // The resolution is recorded (due at once) while the firing waits for its retry.
    let mut resolved = firing.clone();
    resolved.status = AlertStatus::Resolved;
    resolved.window_start += 3 * 3_600_000;
    store
        .record_alerts(vec![(resolved.to_record(1_100), vec!["hook".into()])])
        .await
        .unwrap();
    let report = sender.deliver_due(1_200).await.unwrap();
    assert_eq!(
        report.sent + report.retried,
        0,
        "the resolution waits for the firing: {report:?}"
    );
    // The firing fails once more; then both go, firing first.
    let mut now = 1_200;
    let mut sent = 0;
    while sent < 2 {
        now += 60_000;
        sent += sender.deliver_due(now).await.unwrap().sent;
        assert!(now < 3_600_000, "never delivered");
    }
    let requests = receiver.requests.lock().unwrap();
    let keys: Vec<&str> = requests.iter().map(|(key, _, _)| key.as_str()).collect();
    let firing_key = format!("{}:firing:{}", firing.id, firing.window_start);
    let resolved_key = format!("{}:resolved:{}", firing.id, resolved.window_start);
    assert_eq!(
        keys,
        vec![
            firing_key.as_str(),
            firing_key.as_str(),
            firing_key.as_str(),
            resolved_key.as_str()
        ]
    );
}
