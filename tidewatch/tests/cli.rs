//! The command line as a user runs it: the binary, a config file, the
//! embedded store, and the demo.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tidewatch::fixtures::DemoShape;

fn tidewatch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tidewatch"))
        .args(args)
        .output()
        .expect("running tidewatch")
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn temp_dir(name: &str) -> PathBuf {
    let directory =
        std::env::temp_dir().join(format!("tidewatch-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&directory);
    std::fs::create_dir_all(&directory).unwrap();
    directory
}

#[test]
fn reference_build_stores_a_profile_that_reference_list_shows() {
    let directory = temp_dir("reference");
    let config = directory.join("tidewatch.toml");
    let example = std::fs::read_to_string(repo("fixtures/tidewatch.example.toml")).unwrap();
    // The example with the embedded store instead of ClickHouse.
    let start = example.find("[store]").unwrap();
    let end = example.find("[windows]").unwrap();
    let embedded = format!(
        "{}[store]\ntype = \"embedded\"\npath = \"state/tidewatch.db\"\n\n{}",
        &example[..start],
        &example[end..]
    );
    std::fs::write(&config, embedded).unwrap();
    let config = config.to_str().unwrap();
    let training = repo("fixtures/demo-sample-train.csv");

    let built = tidewatch(&[
        "reference",
        "build",
        "--config",
        config,
        "--model",
        "churn",
        "--version",
        "7",
        "--input",
        training.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&built.stdout);
    assert!(
        built.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&built.stderr)
    );
    assert!(
        stdout.contains("stored reference of churn v7 from file:demo-sample-train.csv (300 rows"),
        "{stdout}"
    );
    assert!(
        directory.join("state/tidewatch.db").exists(),
        "the embedded path is relative to the config file"
    );

    let listed = tidewatch(&["reference", "list", "--config", config]);
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success());
    assert!(
        stdout.starts_with("churn\tv7\tfile:demo-sample-train.csv\t300 rows"),
        "{stdout}"
    );

    let unknown = tidewatch(&[
        "reference",
        "build",
        "--config",
        config,
        "--model",
        "nope",
        "--version",
        "1",
        "--input",
        training.to_str().unwrap(),
    ]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no model named `nope`"));
    let _ = std::fs::remove_dir_all(&directory);
}

#[test]
fn a_broken_config_fails_with_the_file_and_the_key() {
    let broken = repo("fixtures/broken.toml");
    let output = tidewatch(&["run", "--config", broken.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("broken.toml: `windows.size`: must be whole seconds between 1m and 1d"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_finds_the_injected_drift_and_only_it() {
    let directory = temp_dir("demo");
    let shape = DemoShape {
        hours: 6,
        predictions_per_hour: 3_000,
        drift_onset_hour: 4,
        drift_end_hour: None,
        training_rows: 50_000,
    };
    let outcome = tidewatch::demo::run(&directory, 42, shape).await.unwrap();
    let report = outcome.report;
    assert!(report.contains("3 dead-lettered"), "{report}");
    assert!(
        report.contains(
            "drift onset: window 2026-01-05 04:00 UTC, in actual.label, monthly_charges, multivariate, payment_method, prediction.class, prediction.score, support_calls"
        ),
        "{report}"
    );
    assert!(
        report.contains("2026-01-05 04:00 UTC  [warning] drift_on_features on churn v7:"),
        "one grouped alert at the onset: {report}"
    );
    let metrics = outcome
        .store
        .window_metrics(store::MetricsQuery::default())
        .await
        .unwrap();
    for record in metrics
        .iter()
        .filter(|m| m.key.segment == "all" && m.metrics.count >= 100)
    {
        let hour = (record.key.window_start - tidewatch::fixtures::DEMO_START_MS) / 3_600_000;
        let injected = matches!(
            record.key.feature.as_str(),
            "monthly_charges" | "support_calls" | "payment_method"
        );
        if matches!(
            record.key.feature.as_str(),
            "age" | "tenure_months" | "contract"
        ) {
            assert_eq!(record.metrics.drifted, Some(false), "{:?}", record.key);
        }
        // The reconstruction error rises with the shifted inputs (and the
        // category the reference never saw).
        if injected || record.key.feature == "multivariate" {
            assert_eq!(
                record.metrics.drifted,
                Some(hour >= 4),
                "{:?} psi {:?}",
                record.key,
                record.metrics.psi
            );
        }
    }
    assert!(
        metrics
            .iter()
            .any(|m| m.key.feature == "multivariate" && m.metrics.count >= 1_000),
        "{report}"
    );
    // Performance estimated from the scores, at each window's close. The
    // scores are the true churn probabilities before and after the onset
    // (covariate shift only), so the estimate agrees with the accuracy the
    // labels give later, and moves at the onset, when the window closes.
    let estimated: Vec<&store::WindowMetrics> = metrics
        .iter()
        .filter(|m| m.key.segment == "all" && m.key.feature == "estimated_quality")
        .filter(|m| m.metrics.count >= 1_000)
        .collect();
    assert_eq!(estimated.len(), 6, "{report}");
    let (mut before, mut after) = (Vec::new(), Vec::new());
    for record in &estimated {
        let hour = (record.key.window_start - tidewatch::fixtures::DEMO_START_MS) / 3_600_000;
        let find = |metric: &str| {
            record
                .metrics
                .estimated
                .iter()
                .find(|e| e.metric.as_str() == metric)
                .copied()
                .unwrap_or_else(|| panic!("no {metric} at hour {hour}: {report}"))
        };
        let quality = metrics
            .iter()
            .find(|m| {
                m.key.segment == "all"
                    && m.key.feature == "quality"
                    && m.key.window_start == record.key.window_start
            })
            .and_then(|m| m.metrics.quality.clone())
            .unwrap();
        let accuracy = find("accuracy");
        let auc = find("roc_auc");
        // About 1,800 joined labels: the realized accuracy's own error is
        // ≈ 0.010, the estimate's ≈ 0.008.
        assert!(
            (accuracy.value - quality.accuracy.unwrap()).abs() < 0.04,
            "hour {hour}: {accuracy:?} vs {quality:?}"
        );
        assert!(
            (auc.value - quality.roc_auc.unwrap()).abs() < 0.04,
            "hour {hour}: {auc:?} vs {quality:?}"
        );
        if hour < 4 {
            before.push(accuracy.value);
        } else {
            after.push(accuracy.value);
        }
        // With 3,000 predictions an hour the accuracy band is ±0.023; the
        // shift moves the estimate by about twice that when the onset
        // window closes, two hours before all its labels have arrived.
        assert_eq!(
            accuracy.alert,
            hour >= 4,
            "hour {hour}: {accuracy:?}\n{report}"
        );
    }
    // The estimated accuracy drops at the onset (by 0.05 in this scenario).
    let mean = |values: &[f64]| values.iter().sum::<f64>() / values.len() as f64;
    assert!(
        mean(&before) - mean(&after) > 0.03,
        "estimated accuracy {before:?} before the onset, {after:?} after"
    );
    assert!(
        report.contains("Performance estimated from the scores"),
        "{report}"
    );
    assert!(report.contains("Multivariate drift"), "{report}");
    // The alerts were recorded in the embedded store: the CLI lists them.
    let config = directory.join("tidewatch.toml");
    std::fs::write(
        &config,
        "version = 1\n[store]\ntype = \"embedded\"\npath = \"tidewatch.db\"\n[[models]]\nname = \"churn\"\ntask = \"classification\"\nfeatures = []\n",
    )
    .unwrap();
    let listed = tidewatch(&[
        "alerts",
        "list",
        "--config",
        config.to_str().unwrap(),
        "--model",
        "churn",
    ]);
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let firing = stdout
        .lines()
        .find(|line| {
            line.contains("\tfiring\twarning\t2026-01-05 04:00 UTC\t[warning] drift_on_features")
        })
        .unwrap_or_else(|| panic!("no firing alert listed: {stdout}"));
    let id = firing.split('\t').next().unwrap();
    let shown = tidewatch(&["alerts", "show", "--config", config.to_str().unwrap(), id]);
    let payload = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.status.success());
    assert!(
        payload.contains(&format!("\"id\":\"{id}\"")) && payload.contains("\"findings\""),
        "{payload}"
    );
    let _ = std::fs::remove_dir_all(&directory);
}

/// Accepts one HTTP request on 127.0.0.1 and answers `status`; returns the
/// address and a handle yielding the raw request.
fn one_request_receiver(status: &'static str) -> (String, std::thread::JoinHandle<String>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut request = Vec::new();
        let mut buffer = [0u8; 4096];
        // Read headers, then the body by Content-Length.
        loop {
            let read = stream.read(&mut buffer).unwrap();
            request.extend_from_slice(&buffer[..read]);
            let text = String::from_utf8_lossy(&request).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let length: usize = text
                    .lines()
                    .find_map(|line| {
                        line.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if request.len() >= end + 4 + length {
                    break;
                }
            }
            if read == 0 {
                break;
            }
        }
        let response =
            format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        stream.write_all(response.as_bytes()).unwrap();
        String::from_utf8_lossy(&request).to_string()
    });
    (format!("http://{address}/hook"), handle)
}

#[test]
fn alerts_test_channel_sends_a_signed_test_message() {
    let directory = temp_dir("test-channel");
    let (url, request) = one_request_receiver("200 OK");
    let config = directory.join("tidewatch.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\n[[alerts.channels]]\ntype = \"webhook\"\nname = \"hook\"\nurl = \"{url}\"\nsecret_env = \"TIDEWATCH_CLI_TEST_SECRET\"\n[[models]]\nname = \"m\"\ntask = \"regression\"\nfeatures = []\n"
        ),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tidewatch"))
        .args([
            "alerts",
            "test-channel",
            "--config",
            config.to_str().unwrap(),
            "hook",
        ])
        .env("TIDEWATCH_CLI_TEST_SECRET", "s3cret")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout)
        .contains("test message delivered to channel `hook`"));
    let request = request.join().unwrap();
    assert!(request.starts_with("POST /hook HTTP/1.1"), "{request}");
    let lowercase = request.to_ascii_lowercase();
    assert!(
        lowercase.contains("x-tidewatch-signature: v1="),
        "{request}"
    );
    assert!(request.contains("test message from Tidewatch"), "{request}");

    // A channel that answers an error makes the command fail, saying why.
    let (url, request) = one_request_receiver("503 Service Unavailable");
    std::fs::write(
        &config,
        format!("version = 1\n[[alerts.channels]]\ntype = \"slack\"\nname = \"slack\"\nurl = \"{url}\"\n[[models]]\nname = \"m\"\ntask = \"regression\"\nfeatures = []\n"),
    )
    .unwrap();
    let failed = tidewatch(&[
        "alerts",
        "test-channel",
        "--config",
        config.to_str().unwrap(),
        "slack",
    ]);
    assert!(!failed.status.success());
    assert!(
        String::from_utf8_lossy(&failed.stderr).contains("channel `slack`: HTTP 503"),
        "{}",
        String::from_utf8_lossy(&failed.stderr)
    );
    assert!(
        request.join().unwrap().contains("\"blocks\""),
        "a Block Kit message"
    );
    let _ = std::fs::remove_dir_all(&directory);
}

/// `tidewatch replay` reads one line at a time: a line over the 16 MiB
/// limit stops the replay with the line and the limit named, before it is
/// held whole.
#[test]
fn replay_stops_at_a_line_over_the_limit_naming_it() {
    let directory = temp_dir("long-line");
    let file = directory.join("long.jsonl");
    let mut text = "{\"pad\":\"".to_owned();
    text.push_str(&"a".repeat(17 << 20));
    text.push_str("\"}\n");
    std::fs::write(&file, text).unwrap();
    // Nothing listens on the discard port: no line is ever delivered.
    let output = tidewatch(&[
        "replay",
        file.to_str().unwrap(),
        "--to",
        "127.0.0.1:9",
        "--topic",
        "t",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("line 1 is") && stderr.contains("longer than the 16777216-byte limit"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&directory);
}
