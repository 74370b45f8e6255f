//! The closed loop (`tidewatch demo --loop`, [`tidewatch::demo_loop`]) end
//! to end: drift on v1 → retrain request → v2 trained on post-drift labels,
//! registered with its reference → v2 in shadow → promoted on the same
//! requests' labels → v2 serves, its drift clean, its accuracy recovered.
//!
//! Run three ways: in one process on the in-process bus and the embedded
//! store (what the demo runs), and over the real broker and ClickHouse
//! (started by `scripts/test.sh`), once with Tidewatch's reference trainer
//! and once with a deliberately bad trainer plugged into the bus, whose
//! version must be rejected. Each checks the order of the events on the
//! bus and that every one is a valid CloudEvent.

mod common;

use serde_json::Value;
use tidewatch::demo_loop::{self, Observed, Options, Outcome, Topic, Trainer, Transport};

/// Checks the CloudEvents 1.0 required attributes and the ones Tidewatch
/// always sets (structured JSON mode).
fn check_cloud_event(event: &Value) -> Result<(), String> {
    if event["specversion"] != "1.0" {
        return Err("specversion is not 1.0".into());
    }
    for attribute in ["id", "source", "type", "time", "subject"] {
        match event[attribute].as_str() {
            Some(value) if !value.is_empty() => {}
            _ => return Err(format!("`{attribute}` is missing or empty")),
        }
    }
    chrono::DateTime::parse_from_rfc3339(event["time"].as_str().unwrap_or_default())
        .map_err(|e| format!("time is not RFC 3339: {e}"))?;
    if !event["type"]
        .as_str()
        .unwrap_or_default()
        .starts_with("io.tidewatch.")
    {
        return Err(format!("type {} is not Tidewatch's", event["type"]));
    }
    if event.get("datacontenttype").is_some() && event["datacontenttype"] != "application/json" {
        return Err(format!("datacontenttype {}", event["datacontenttype"]));
    }
    if !event["data"].is_object() {
        return Err("data is not an object".into());
    }
    Ok(())
}

/// The first event of `topic` matching `matches`, with its index.
/// The first event on `topic` that `matches`, with its CloudEvent time (µs):
/// when it happened, which orders events causally even when their readers
/// saw them in different simulated hours (over Kafka each topic has its own
/// reader, and one may see an event an hour later than another).
fn first(
    observed: &[Observed],
    topic: Topic,
    matches: impl Fn(&Value) -> bool,
) -> Option<(i64, &Observed)> {
    observed
        .iter()
        .find(|o| o.topic == topic && matches(&o.event))
        .map(|o| {
            let time = o.event["time"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.timestamp_micros())
                .expect("a CloudEvent has a time");
            (time, o)
        })
}

/// What every run must show.
fn check_common(outcome: &Outcome) {
    for observed in &outcome.observed {
        check_cloud_event(&observed.event)
            .unwrap_or_else(|e| panic!("{e}: {} on {:?}", observed.event, observed.topic));
    }
    // v1 is good before the drift and falls after it.
    let before = demo_loop::mean_accuracy(outcome, "1", 0..demo_loop::DRIFT_HOUR).unwrap();
    let after = demo_loop::mean_accuracy(
        outcome,
        "1",
        demo_loop::DRIFT_HOUR..demo_loop::DRIFT_HOUR + 3,
    )
    .unwrap();
    assert!(
        before > 0.85,
        "v1 before the drift: {before}\n{}",
        outcome.report
    );
    assert!(
        after < before - 0.15,
        "v1 after the drift: {after}\n{}",
        outcome.report
    );
    // The drift is seen against v1's reference from the drift hour, and
    // not before: at most a lone input flagged by chance (the p-value tests
    // flag about α of unchanged windows), never enough for the drift rule.
    assert!(
        outcome.drift_alerting(demo_loop::DRIFT_HOUR, "1"),
        "{}",
        outcome.report
    );
    assert!(
        !(0..demo_loop::DRIFT_HOUR).any(|h| outcome.drift_alerting(h, "1")),
        "drift before the drift hour\n{}",
        outcome.report
    );
}

/// The reference trainer's loop: the chain in order, v2 better on the
/// same requests, promoted, clean and accurate afterwards.
fn check_promoted(outcome: &Outcome) {
    check_common(outcome);
    let observed = &outcome.observed;
    let report = &outcome.report;
    let (request_at, request) = first(observed, Topic::Retrain, |e| {
        e["type"] == "io.tidewatch.retrain.requested" && e["data"]["version"] == "1"
    })
    .unwrap_or_else(|| panic!("no retrain request for v1\n{report}"));
    assert!(request.hour > demo_loop::DRIFT_HOUR, "{report}");
    let train_start = request.event["data"]["train_window"]["start_ms"]
        .as_i64()
        .unwrap();
    assert!(
        train_start >= outcome.start_ms + demo_loop::DRIFT_HOUR * 3_600_000,
        "the training window starts at the drift: {report}"
    );
    let request_id = request.event["id"].as_str().unwrap();
    let (ack_at, ack) = first(observed, Topic::Acks, |e| {
        e["data"]["request_id"] == request_id
    })
    .unwrap_or_else(|| panic!("the request was not acknowledged\n{report}"));
    assert_eq!(
        ack.event["type"], "io.tidewatch.retrain.completed",
        "{report}"
    );
    let v2 = ack.event["data"]["version"].as_str().unwrap().to_owned();
    assert!(
        ack.event["data"]["rows"].as_u64().unwrap() >= 150,
        "{report}"
    );
    let (challenger_at, _) = first(observed, Topic::Registry, |e| {
        e["type"] == "io.tidewatch.registry.model_version_alias.created"
            && e["data"]["alias"] == "challenger"
    })
    .unwrap_or_else(|| panic!("no challenger alias\n{report}"));
    let (shadow_at, _) = first(observed, Topic::Routes, |e| {
        e["data"]["challenger"] == v2.as_str()
    })
    .unwrap_or_else(|| panic!("the gateway never routed v{v2}\n{report}"));
    let (decision_at, decision) = first(observed, Topic::Promotions, |_| true)
        .unwrap_or_else(|| panic!("no promotion decision\n{report}"));
    assert_eq!(decision.event["data"]["verdict"], "promote", "{report}");
    assert_eq!(
        decision.event["data"]["challenger"],
        v2.as_str(),
        "{report}"
    );
    let evidence = &decision.event["data"]["evidence"];
    assert!(evidence["pairs"].as_u64().unwrap() >= 150, "{report}");
    assert!(evidence["p_value"].as_f64().unwrap() < 0.01, "{report}");
    let (champion_at, _) = first(observed, Topic::Registry, |e| {
        e["type"] == "io.tidewatch.registry.model_version_alias.created"
            && e["data"]["alias"] == "champion"
            && e["subject"]
                .as_str()
                .is_some_and(|s| s.ends_with(&format!("/{v2}")))
    })
    .unwrap_or_else(|| panic!("v{v2} never became champion\n{report}"));
    let (served_at, _) = first(observed, Topic::Routes, |e| {
        e["data"]["champion"] == v2.as_str()
    })
    .unwrap_or_else(|| panic!("the gateway never served v{v2}\n{report}"));
    // Request, training, challenger, shadow route, promotion, serving: in
    // that order (the alias moves before the decision is published).
    // (Times have millisecond resolution: one step may share its
    // predecessor's millisecond.)
    assert!(
        request_at <= challenger_at && request_at <= ack_at,
        "{report}"
    );
    assert!(challenger_at <= shadow_at, "{report}");
    assert!(
        shadow_at <= champion_at && champion_at <= served_at,
        "{report}"
    );
    assert!(champion_at <= decision_at, "{report}");
    let promoted = decision.hour;

    // On the same post-drift requests, v2 beats v1.
    let shadow_hours = (demo_loop::DRIFT_HOUR + 1)..(promoted + 1);
    let v1 = demo_loop::mean_accuracy(outcome, "1", shadow_hours.clone()).unwrap();
    let v2_shadow = demo_loop::mean_accuracy(outcome, &v2, shadow_hours).unwrap();
    assert!(v2_shadow > v1 + 0.1, "v2 {v2_shadow} vs v1 {v1}\n{report}");
    // After the promotion v2 serves: accurate, and clean against its own
    // reference.
    let after = demo_loop::mean_accuracy(outcome, &v2, promoted + 1..demo_loop::HOURS).unwrap();
    assert!(after > 0.85, "v2 after its promotion: {after}\n{report}");
    let drifted_after = (promoted + 1..demo_loop::HOURS)
        .filter(|hour| outcome.drift_alerting(*hour, &v2))
        .count();
    assert_eq!(drifted_after, 0, "{report}");
    assert!(
        outcome
            .accuracy
            .keys()
            .all(|(h, v)| v != "1" || *h <= promoted),
        "v1 answered after its replacement\n{report}"
    );
}

/// The bad trainer's loop: its version is rejected, v1 stays champion.
fn check_rejected(outcome: &Outcome) {
    check_common(outcome);
    let report = &outcome.report;
    let observed = &outcome.observed;
    let (_, ack) = first(observed, Topic::Acks, |e| {
        e["type"] == "io.tidewatch.retrain.completed"
    })
    .unwrap_or_else(|| panic!("the bad trainer did not answer\n{report}"));
    let bad = ack.event["data"]["version"].as_str().unwrap().to_owned();
    assert!(
        first(observed, Topic::Routes, |e| e["data"]["challenger"]
            == bad.as_str())
        .is_some(),
        "the bad version never ran in shadow\n{report}"
    );
    let decisions: Vec<&Observed> = observed
        .iter()
        .filter(|o| o.topic == Topic::Promotions)
        .collect();
    assert!(
        decisions
            .iter()
            .all(|d| d.event["data"]["verdict"] != "promote"),
        "{report}"
    );
    let rejected = decisions
        .iter()
        .find(|d| d.event["data"]["challenger"] == bad.as_str())
        .unwrap_or_else(|| panic!("v{bad} was never decided\n{report}"));
    assert_eq!(rejected.event["data"]["verdict"], "reject", "{report}");
    assert!(
        first(observed, Topic::Registry, |e| {
            e["data"]["alias"] == "champion"
                && e["subject"].as_str().is_some_and(|s| !s.ends_with("/1"))
        })
        .is_none(),
        "the champion moved\n{report}"
    );
    let evidence = &rejected.event["data"]["evidence"];
    assert!(
        evidence["challenger"].as_f64().unwrap() < evidence["champion"].as_f64().unwrap(),
        "{report}"
    );
}

fn scratch(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("tidewatch-loop-{name}-{}", std::process::id()))
}

/// Runs the loop in `scratch(name)`, printing its report.
async fn run_loop(name: &str, seed: u64, transport: Transport, trainer: Trainer) -> Outcome {
    run_with(name, seed, transport, trainer, None).await
}

/// [`run_loop`], the challenger a canary answering `canary_share`.
async fn run_with(
    name: &str,
    seed: u64,
    transport: Transport,
    trainer: Trainer,
    canary_share: Option<f64>,
) -> Outcome {
    demo_loop::run(
        Options {
            workdir: scratch(name),
            seed,
            transport,
            trainer,
            listen: None,
            token: None,
            canary_share,
        },
        |outcome| println!("{}", outcome.report),
        async {},
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_runs_in_one_process_and_promotes_the_retrained_version() {
    let outcome = run_loop("in-process", 42, Transport::InProcess, Trainer::Reference).await;
    check_promoted(&outcome);
}

/// The challenger as a canary (half the requests): no request is answered
/// by both, so the policy compares each version on its own labelled
/// requests (two-proportion z-test) — and still promotes the better one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_promotes_a_canary_judged_on_its_own_requests() {
    let outcome = run_with(
        "canary",
        42,
        Transport::InProcess,
        Trainer::Reference,
        Some(0.5),
    )
    .await;
    check_promoted(&outcome);
    let (_, decision) = first(&outcome.observed, Topic::Promotions, |_| true).unwrap();
    let evidence = &decision.event["data"]["evidence"];
    assert_eq!(evidence["test"], "two_proportion_z", "{}", outcome.report);
    assert!(evidence["champion_requests"].as_u64().unwrap() >= 150);
    assert!(evidence["challenger_requests"].as_u64().unwrap() >= 150);
    let (_, shadow) = first(&outcome.observed, Topic::Routes, |e| {
        e["data"]["challenger"].is_string()
    })
    .unwrap();
    assert_eq!(
        shadow.event["data"]["challenger_mode"]["mode"], "canary",
        "{}",
        outcome.report
    );
}

/// A Kafka transport with fresh topics and a fresh ClickHouse database.
async fn kafka(name: &str) -> Transport {
    let brokers = common::brokers();
    let suffix = format!(
        "{name}{}x{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            % 100_000
    );
    let prefix = format!("loop-{suffix}-");
    let topics: Vec<String> = [
        "predictions",
        "actuals",
        "retrain",
        "retrain-acks",
        "registry",
        "promotions",
        "routes",
        "dead-letters",
    ]
    .iter()
    .map(|t| format!("{prefix}{t}"))
    .collect();
    common::create_topics(
        &brokers,
        &topics.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    Transport::Kafka {
        brokers,
        prefix,
        store_section: format!(
            "[store]\ntype = \"clickhouse\"\nurl = \"{}\"\ndatabase = \"tw_loop_{suffix}\"\nretry_max_delay = \"1s\"\n",
            common::clickhouse_url()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_runs_over_the_broker_and_clickhouse_and_promotes_the_retrained_version() {
    let outcome = run_loop("kafka", 7, kafka("good").await, Trainer::Reference).await;
    check_promoted(&outcome);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_trainers_worse_version_is_rejected_over_the_broker_and_clickhouse() {
    let outcome = run_loop("bad", 42, kafka("bad").await, Trainer::Bad).await;
    check_rejected(&outcome);
}

/// A child process killed when dropped, its output in a file.
struct PythonTrainer {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl PythonTrainer {
    fn spawn(log: &std::path::Path, command: &mut std::process::Command) -> Self {
        let file = std::fs::File::create(log).unwrap();
        let child = command
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting the Python trainer: {e}"));
        Self {
            child,
            log: log.to_owned(),
        }
    }

    /// Stops it; what it printed.
    fn stop(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PythonTrainer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `examples/python-trainer/trainer.py` (scikit-learn, skl2onnx, the
/// `mlflow` client, confluent-kafka; installed by `scripts/test.sh`) takes
/// the retrain request by webhook, reads the training data from the API,
/// registers an ONNX version through the mlflow client and acknowledges on
/// the broker; the gateway runs it (tract) in shadow and the policy
/// promotes it: the same chain as with Tidewatch's own trainer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_trainer_from_a_webhook_closes_the_loop_over_the_broker_and_clickhouse() {
    let python = std::env::var("TIDEWATCH_TEST_TRAINER_PYTHON").expect(
        "TIDEWATCH_TEST_TRAINER_PYTHON is not set: run the integration suite through scripts/test.sh, \
         which installs examples/python-trainer/requirements.txt",
    );
    let transport = kafka("python").await;
    let Transport::Kafka {
        brokers, prefix, ..
    } = &transport
    else {
        unreachable!()
    };
    let workdir = scratch("python");
    let (http_port, webhook_port) = (common::free_port(), common::free_port());
    let token = format!("{:032x}", rand::random::<u128>());
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/python-trainer/trainer.py");
    let log = workdir.join("python-trainer.log");
    std::fs::create_dir_all(&workdir).unwrap();
    let mut trainer = PythonTrainer::spawn(
        &log,
        std::process::Command::new(&python)
            .arg(&script)
            .args(["--listen", &format!("127.0.0.1:{webhook_port}")])
            .args(["--tidewatch", &format!("http://127.0.0.1:{http_port}")])
            .args(["--brokers", brokers])
            .args(["--ack-topic", &format!("{prefix}retrain-acks")])
            .args([
                "--models-dir",
                &workdir.join("python-models").display().to_string(),
            ])
            .args(["--min-rows", "150", "--label-wait", "30"])
            .env("TIDEWATCH_API_TOKEN", &token),
    );
    let workdir = workdir.clone();
    let outcome = demo_loop::run(
        Options {
            workdir,
            seed: 42,
            transport,
            trainer: Trainer::Webhook {
                url: format!("http://127.0.0.1:{webhook_port}/retrain"),
            },
            listen: Some(([127, 0, 0, 1], http_port).into()),
            token: Some(token),
            canary_share: None,
        },
        |outcome| println!("{}", outcome.report),
        async {},
    )
    .await;
    let output = trainer.stop();
    let outcome = outcome.unwrap_or_else(|e| panic!("{e:#}\nthe trainer said:\n{output}"));
    check_promoted(&outcome);
    let ack = outcome
        .observed
        .iter()
        .find(|o| o.topic == Topic::Acks)
        .unwrap();
    assert_eq!(ack.event["source"], "examples/python-trainer", "{output}");
}
