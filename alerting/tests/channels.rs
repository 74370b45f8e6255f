//! Channels against real servers on 127.0.0.1: email to the SMTP server
//! `scripts/test.sh` starts (aiosmtpd with STARTTLS, implicit TLS and AUTH;
//! the message is read back from its mail directory), a webhook and the
//! retrain endpoint over HTTPS (a rustls server with the test certificate of
//! `fixtures/tls`, verifying the signature), and the retrain event through a
//! bus. Without the SMTP server's variables the email tests fail and say so.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alerting::delivery::{Bus, Channel, ChannelKind, RetryPolicy, Sender, ALERT_ID_HEADER};
use alerting::email::{EmailSettings, Secret, SmtpSecurity};
use alerting::lifecycle::{Alert, AlertStatus, Finding};
use alerting::notification;
use alerting::payload::{verify, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use alerting::retrain::{self, RetrainGate};
use alerting::rules::Severity;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use store::Store;

const SECRET: &[u8] = b"retrain-secret";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/tls")
        .join(name)
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run the integration suite through scripts/test.sh, \
             which installs and starts the SMTP server"
        )
    })
}

fn alert(model: &str) -> Alert {
    Alert {
        id: format!("tw-{model}-1"),
        rule: "feature_drift".into(),
        model: model.into(),
        model_version: "7".into(),
        segment: "all".into(),
        severity: Severity::Critical,
        status: AlertStatus::Firing,
        repeat: false,
        window_start: 1_767_621_600_000,
        window_end: 1_767_625_200_000,
        findings: vec![
            Finding {
                feature: "monthly_charges".into(),
                test: "psi".into(),
                value: 0.91,
                threshold: 0.2,
            },
            Finding {
                feature: "payment_method<&>".into(),
                test: "chi_square_p".into(),
                value: 1e-9,
                threshold: 0.05,
            },
        ],
        summary: format!("[critical] drift on 2 series of {model} v7"),
        channels: Vec::new(),
        retrain: true,
        onset: 1_767_614_400_000,
    }
}

fn policy() -> RetryPolicy {
    RetryPolicy::new(
        3,
        Duration::from_secs(1),
        Duration::from_secs(1),
        Duration::from_secs(10),
    )
    .unwrap()
}

/// Records `alert` under `status` for `channels` and runs one delivery pass.
async fn deliver(
    sender: &Sender,
    store: &Store,
    record: store::AlertRecord,
    channels: &[&str],
) -> alerting::delivery::DeliveryReport {
    store
        .record_alerts(vec![(
            record,
            channels.iter().map(|c| (*c).to_owned()).collect(),
        )])
        .await
        .unwrap();
    sender.deliver_due(1_767_625_300_000).await.unwrap()
}

fn email_settings(address: &str, security: SmtpSecurity, to: &str) -> EmailSettings {
    let (host, port) = address.rsplit_once(':').unwrap();
    EmailSettings {
        host: host.into(),
        port: port.parse().unwrap(),
        security,
        credentials: Some((
            env("TIDEWATCH_TEST_SMTP_USER"),
            Secret(env("TIDEWATCH_TEST_SMTP_PASSWORD")),
        )),
        ca_pem: Some(std::fs::read(fixture("ca.pem")).unwrap()),
        from: "Tidewatch <tidewatch@example.org>".into(),
        to: vec![to.into()],
        dashboard_url: Some("http://127.0.0.1:8080/models/churn".into()),
    }
}

/// The message the SMTP server stored for recipient `to`, waiting briefly.
async fn received(to: &str) -> serde_json::Value {
    let maildir = PathBuf::from(env("TIDEWATCH_TEST_SMTP_MAILDIR"));
    for _ in 0..50 {
        if let Ok(entries) = std::fs::read_dir(&maildir) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "json") {
                    let message: serde_json::Value =
                        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
                    if message["rcpt_tos"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|r| r == to)
                    {
                        return message;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no message for {to} in {}", maildir.display());
}

#[tokio::test]
async fn email_over_starttls_and_implicit_tls_arrives_with_both_parts() {
    let store = Store::in_memory().unwrap();
    let cases = [
        (
            "TIDEWATCH_TEST_SMTP_STARTTLS",
            SmtpSecurity::StartTls,
            "starttls",
        ),
        ("TIDEWATCH_TEST_SMTP_TLS", SmtpSecurity::Tls, "tls"),
    ];
    for (variable, security, listener) in cases {
        let to = format!("oncall+{listener}-{}@example.org", std::process::id());
        let channel = Channel::new(
            "mail".into(),
            ChannelKind::Email(Box::new(email_settings(&env(variable), security, &to))),
            "alerts.channels[0]",
        )
        .unwrap();
        let sender = Sender::new(store.clone(), vec![channel], policy()).unwrap();
        let mut alert = alert("churn");
        alert.id = format!("tw-churn-{listener}");
        let report = deliver(&sender, &store, alert.to_record(1), &["mail"]).await;
        assert_eq!(report.sent, 1, "{listener}: {report:?}");

        let message = received(&to).await;
        assert_eq!(message["listener"], listener);
        assert_eq!(
            message["login"],
            env("TIDEWATCH_TEST_SMTP_USER"),
            "authenticated"
        );
        assert_eq!(message["mail_from"], "tidewatch@example.org");
        let data = message["data"].as_str().unwrap();
        assert!(
            data.contains("Subject: [critical] drift on 2 series of churn v7"),
            "{data}"
        );
        assert!(
            data.contains(&format!("Message-ID: <tw-churn-{listener}.firing.")),
            "{data}"
        );
        assert!(data.contains("multipart/alternative"), "{data}");
        assert!(data.contains("Content-Type: text/plain"), "{data}");
        assert!(data.contains("Content-Type: text/html"), "{data}");
        assert!(data.contains("monthly_charges"), "{data}");
        assert!(
            data.contains("payment_method&lt;&amp;&gt;"),
            "HTML part escapes series names: {data}"
        );
    }
}

#[tokio::test]
async fn a_wrong_smtp_password_or_an_untrusted_certificate_is_a_recorded_failure() {
    let store = Store::in_memory().unwrap();
    let mut wrong_password = email_settings(
        &env("TIDEWATCH_TEST_SMTP_STARTTLS"),
        SmtpSecurity::StartTls,
        "nobody@example.org",
    );
    wrong_password.credentials = Some(("tidewatch".into(), Secret("wrong".into())));
    let mut untrusted = email_settings(
        &env("TIDEWATCH_TEST_SMTP_TLS"),
        SmtpSecurity::Tls,
        "nobody@example.org",
    );
    untrusted.ca_pem = None;
    let channels = vec![
        Channel::new(
            "wrong".into(),
            ChannelKind::Email(Box::new(wrong_password)),
            "k",
        )
        .unwrap(),
        Channel::new(
            "untrusted".into(),
            ChannelKind::Email(Box::new(untrusted)),
            "k",
        )
        .unwrap(),
    ];
    let sender = Sender::new(store.clone(), channels, policy()).unwrap();
    let report = deliver(
        &sender,
        &store,
        alert("fraud").to_record(1),
        &["wrong", "untrusted"],
    )
    .await;
    // Bad credentials are a permanent SMTP reply: no retry. An untrusted
    // certificate may be fixed on the server's side: retried.
    assert_eq!((report.sent, report.retried, report.failed), (0, 1, 1));
    let deliveries = store.deliveries(&alert("fraud").id).await.unwrap();
    let error = |channel: &str| {
        deliveries
            .iter()
            .find(|d| d.channel == channel)
            .unwrap()
            .last_error
            .clone()
    };
    let wrong = deliveries.iter().find(|d| d.channel == "wrong").unwrap();
    assert_eq!(wrong.state, store::DeliveryState::Failed);
    assert!(
        error("wrong").starts_with("gave up: not retryable: SMTP"),
        "{}",
        error("wrong")
    );
    assert!(
        error("untrusted").to_lowercase().contains("certificate"),
        "{}",
        error("untrusted")
    );
}

/// An HTTPS receiver on 127.0.0.1 with the test certificate; records
/// (path, headers, body) of every request and answers 200.
type Requests = Arc<Mutex<Vec<(String, hyper::HeaderMap, Vec<u8>)>>>;

async fn start_https_receiver() -> (String, Requests) {
    let certificates: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(fixture("server.pem"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_file(fixture("server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certificates, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let requests: Requests = Arc::default();
    let seen = Arc::clone(&requests);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let seen = Arc::clone(&seen);
                        async move {
                            let path = request.uri().path().to_owned();
                            let headers = request.headers().clone();
                            let body = request.into_body().collect().await?.to_bytes();
                            seen.lock().unwrap().push((path, headers, body.to_vec()));
                            Ok::<_, hyper::Error>(hyper::Response::new(Full::new(Bytes::new())))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (format!("https://127.0.0.1:{}", address.port()), requests)
}

/// (topic, key, payload, headers) of a published event.
type Published = (String, String, Vec<u8>, Vec<(&'static str, String)>);

/// A bus that keeps what is published.
#[derive(Default)]
struct MemoryBus {
    events: Mutex<Vec<Published>>,
}

impl Bus for MemoryBus {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        key: &'a str,
        payload: Vec<u8>,
        headers: Vec<(&'static str, String)>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>> {
        self.events
            .lock()
            .unwrap()
            .push((topic.into(), key.into(), payload, headers));
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test]
async fn https_webhooks_and_retrain_requests_carry_the_signed_cloudevent() {
    let store = Store::in_memory().unwrap();
    let (base, requests) = start_https_receiver().await;
    let ca = std::fs::read(fixture("ca.pem")).unwrap();
    let channels = vec![
        Channel::new(
            "hook".into(),
            ChannelKind::Webhook(alerting::delivery::Endpoint {
                url: format!("{base}/hook"),
                secret: Some(SECRET.to_vec()),
                ca_pem: Some(ca.clone()),
            }),
            "alerts.channels[0]",
        )
        .unwrap(),
        Channel::new(
            notification::RETRAIN_WEBHOOK_CHANNEL.into(),
            ChannelKind::RetrainWebhook(alerting::delivery::Endpoint {
                url: format!("{base}/retrain"),
                secret: Some(SECRET.to_vec()),
                ca_pem: Some(ca),
            }),
            "alerts.retrain",
        )
        .unwrap(),
        Channel::new(
            notification::RETRAIN_BUS_CHANNEL.into(),
            ChannelKind::Bus {
                topic: "ml.retrain".into(),
            },
            "alerts.retrain",
        )
        .unwrap(),
    ];
    let bus = Arc::new(MemoryBus::default());
    let sender = Sender::new(store.clone(), channels, policy())
        .unwrap()
        .with_bus(bus.clone());

    let alert = alert("churn");
    let mut gate = RetrainGate::new(
        3_600_000,
        vec![
            notification::RETRAIN_WEBHOOK_CHANNEL.into(),
            notification::RETRAIN_BUS_CHANNEL.into(),
        ],
    );
    let request = gate.admit(&alert, 1_767_625_300_000).unwrap();
    assert!(gate.admit(&alert, 1_767_625_300_001).is_none(), "debounced");
    store
        .record_alerts(vec![
            (alert.to_record(1), vec!["hook".into()]),
            (retrain::to_record(&request, 2), request.channels.clone()),
        ])
        .await
        .unwrap();
    let report = sender.deliver_due(1_767_625_300_000).await.unwrap();
    assert_eq!((report.sent, report.retried, report.failed), (3, 0, 0));

    let requests = requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 2);
    let request_id = retrain::request_id(&alert);
    for (path, headers, body) in &requests {
        let header = |name: &str| headers.get(name).unwrap().to_str().unwrap().to_owned();
        let timestamp: u64 = header(TIMESTAMP_HEADER).parse().unwrap();
        assert!(
            verify(
                SECRET,
                timestamp,
                body,
                &header(SIGNATURE_HEADER),
                timestamp,
                300
            ),
            "{path}: signature"
        );
        if path == "/retrain" {
            assert_eq!(header(ALERT_ID_HEADER), request_id);
            assert!(header("content-type").starts_with("application/cloudevents+json"));
        }
    }
    let (_, _, body) = requests.iter().find(|(p, _, _)| p == "/retrain").unwrap();
    let event: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["type"], notification::RETRAIN_REQUESTED);
    assert_eq!(event["id"], request_id.as_str());
    assert_eq!(event["subject"], "churn/7");
    assert_eq!(event["data"]["model"], "churn");
    assert_eq!(event["data"]["version"], "7");
    assert_eq!(
        event["data"]["drifted_features"][0]["feature"],
        "monthly_charges"
    );
    assert_eq!(
        event["data"]["train_window"]["start_ms"], alert.onset,
        "from the onset of the drift"
    );
    assert_eq!(event["data"]["train_window"]["end_ms"], alert.window_end);

    let events = bus.events.lock().unwrap().clone();
    assert_eq!(events.len(), 1);
    let (topic, key, payload, headers) = &events[0];
    assert_eq!((topic.as_str(), key.as_str()), ("ml.retrain", "churn"));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(payload).unwrap(),
        event,
        "the bus carries the same event"
    );
    assert!(headers
        .iter()
        .any(|(name, value)| *name == "content-type" && value.contains("cloudevents")));

    let deliveries = store.due_deliveries(u64::MAX >> 1, 10).await.unwrap();
    assert!(deliveries.is_empty());
}
