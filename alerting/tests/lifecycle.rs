//! The alert lifecycle over a sequence of windows: one grouped alert when
//! drift starts, silence during the cooldown, one resolution; quality drops
//! against a baseline; signatures that verify.

use alerting::lifecycle::{AlertEvaluator, AlertStatus};
use alerting::payload::{sign, slack_message, verify, webhook_body};
use alerting::rules::{default_rules, Condition, Rule, Severity};
use detectors::metrics::{DriftThresholds, FeatureWindowMetrics, TestResult};
use detectors::quality::QualityMetrics;
use detectors::spec::FeatureKind;
use detectors::SeriesKey;
use store::WindowMetrics;

const HOUR: i64 = 3_600_000;

fn series(window: i64, feature: &str, psi: f64) -> WindowMetrics {
    WindowMetrics {
        key: SeriesKey {
            window_start: window * HOUR,
            model: "churn".into(),
            model_version: "7".into(),
            segment: "all".into(),
            feature: feature.into(),
        },
        window_end: (window + 1) * HOUR,
        metrics: {
            let mut metrics = FeatureWindowMetrics::empty(
                FeatureKind::Numeric,
                1000,
                0,
                0,
                DriftThresholds::default(),
            );
            metrics.psi = Some(psi);
            metrics.drifted = Some(psi >= 0.2);
            metrics.tests = vec![TestResult {
                test: detectors::metrics::DriftTest::Psi,
                value: psi,
                threshold: 0.2,
                drifted: psi >= 0.2,
            }];
            metrics
        },
        reference_source: Some("file:train.csv".into()),
        version: 1,
    }
}

/// Window `w` of five features; when `drifting`, four of them drift.
fn window(w: i64, drifting: bool) -> Vec<WindowMetrics> {
    ["age", "charges", "calls", "plan", "tenure"]
        .iter()
        .enumerate()
        .map(|(i, feature)| {
            let psi = if drifting && i < 4 {
                0.3 + i as f64 * 0.2
            } else {
                0.01
            };
            series(w, feature, psi)
        })
        .collect()
}

fn drift_rule() -> Rule {
    let mut rule = default_rules(&["slack".to_owned()]).remove(0);
    rule.cooldown_windows = 3;
    rule
}

#[test]
fn a_drift_episode_fires_once_repeats_after_the_cooldown_and_resolves_once() {
    let mut evaluator = AlertEvaluator::new(vec![drift_rule()]);
    let mut notifications = Vec::new();
    for w in 0..12 {
        // Drift from window 3 to window 7 (inclusive), clear afterwards.
        for alert in evaluator.evaluate("churn", &window(w, (3..8).contains(&w))) {
            notifications.push((w, alert));
        }
    }
    let kinds: Vec<(i64, AlertStatus, bool)> = notifications
        .iter()
        .map(|(w, a)| (*w, a.status, a.repeat))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (3, AlertStatus::Firing, false),
            (6, AlertStatus::Firing, true),
            (9, AlertStatus::Resolved, false)
        ],
        "fire at the onset, one reminder after 3 windows, resolve after 2 clear windows"
    );
    let first = &notifications[0].1;
    assert_eq!(
        first.findings.len(),
        4,
        "one alert lists every drifted series"
    );
    let order: Vec<&str> = first.findings.iter().map(|f| f.feature.as_str()).collect();
    assert_eq!(
        order,
        ["plan", "calls", "charges", "age"],
        "most severe first"
    );
    assert!(
        notifications.iter().all(|(_, a)| a.id == first.id),
        "one id per episode"
    );
    assert_eq!(first.severity, Severity::Warning);
    assert!(
        first
            .summary
            .starts_with("[warning] drift_on_features on churn v7: plan psi=0.900"),
        "{}",
        first.summary
    );
}

#[test]
fn a_window_finalized_again_is_not_evaluated_twice() {
    let mut evaluator = AlertEvaluator::new(vec![drift_rule()]);
    assert_eq!(evaluator.evaluate("churn", &window(0, true)).len(), 1);
    assert!(evaluator.evaluate("churn", &window(0, true)).is_empty());
}

#[test]
fn quality_drop_is_measured_against_the_first_windows() {
    let rule = default_rules(&[]).remove(1);
    assert!(matches!(rule.condition, Condition::QualityDrop { .. }));
    let mut evaluator = AlertEvaluator::new(vec![rule]);
    let mut fired = Vec::new();
    for (w, accuracy) in QUALITY_ACCURACIES.iter().enumerate() {
        for alert in evaluator.evaluate("churn", &quality(w as i64, *accuracy, 500)) {
            fired.push((w, alert.status));
        }
    }
    // Baseline 0.81 from the first three windows; 0.74 < 0.76 fires, two
    // clear windows resolve.
    assert_eq!(
        fired,
        vec![(4, AlertStatus::Firing), (7, AlertStatus::Resolved)]
    );
}

const QUALITY_ACCURACIES: [f64; 8] = [0.80, 0.82, 0.81, 0.79, 0.74, 0.73, 0.80, 0.81];

/// The quality series of window `w`: `accuracy` over `matched` labels.
fn quality(w: i64, accuracy: f64, matched: u64) -> Vec<store::WindowMetrics> {
    let mut record = series(w, "quality", 0.0);
    record.metrics.kind = FeatureKind::Quality;
    record.metrics.quality = Some(QualityMetrics {
        matched,
        accuracy: Some(accuracy),
        ..Default::default()
    });
    vec![record]
}

#[test]
fn quality_drop_waits_for_enough_labels() {
    let mut evaluator = AlertEvaluator::new(vec![default_rules(&[]).remove(1)]);
    // A window's first few labels (as when it is finalized before most of
    // its actuals arrive) neither fire nor enter the baseline.
    assert!(evaluator.evaluate("churn", &quality(0, 0.20, 5)).is_empty());
    let mut fired = Vec::new();
    for (w, accuracy) in QUALITY_ACCURACIES.iter().enumerate() {
        let w = w as i64 + 1;
        assert!(evaluator
            .evaluate("churn", &quality(w, 0.10, 99))
            .is_empty());
        for alert in evaluator.evaluate("churn", &quality(w, *accuracy, 100)) {
            fired.push((w, alert.status));
        }
    }
    assert_eq!(
        fired,
        vec![(5, AlertStatus::Firing), (8, AlertStatus::Resolved)]
    );
}

#[test]
fn payloads_carry_the_context_and_signatures_verify() {
    let mut evaluator = AlertEvaluator::new(vec![drift_rule()]);
    let alert = evaluator.evaluate("churn", &window(5, true)).remove(0);
    let slack = slack_message(&alert, Some("http://127.0.0.1:3000/models/churn"));
    let text = slack.to_string();
    assert!(
        text.contains("churn v7") && text.contains("plan") && text.contains("threshold 0.2000"),
        "{text}"
    );
    assert!(text.contains("\"url\":\"http://127.0.0.1:3000/models/churn\""));
    assert_eq!(slack["blocks"][0]["type"], "header");

    let body = webhook_body(&alert);
    let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(parsed["schema"], "tidewatch.alert.v1");
    assert_eq!(parsed["id"], alert.id.as_str());

    let secret = b"shared-secret";
    let signature = sign(secret, 1_767_571_200, &body);
    assert!(signature.starts_with("v1=") && signature.len() == 67);
    assert!(verify(
        secret,
        1_767_571_200,
        &body,
        &signature,
        1_767_571_260,
        300
    ));
    assert!(
        !verify(
            b"wrong",
            1_767_571_200,
            &body,
            &signature,
            1_767_571_260,
            300
        ),
        "wrong secret"
    );
    let mut tampered = body.clone();
    tampered[10] ^= 1;
    assert!(
        !verify(
            secret,
            1_767_571_200,
            &tampered,
            &signature,
            1_767_571_260,
            300
        ),
        "tampered body"
    );
    assert!(
        !verify(secret, 1_767_571_200, &body, &signature, 1_767_572_000, 300),
        "replayed too late"
    );
}

#[test]
fn the_signature_matches_an_independent_hmac() {
    // hmac.new(b"key", b"1.{}", hashlib.sha256).hexdigest() in Python.
    assert_eq!(sign(b"key", 1, b"{}"), format!("v1={PYTHON_HMAC}"));
}

const PYTHON_HMAC: &str = "1ba6b8171186efc613e8bcc0cbdab2748f24984d7c5a84faa2637afa0e40d224";

/// Rule `condition` on series `psi` of feature "charges", firing at once.
fn rule_on(condition: Condition) -> Rule {
    Rule {
        name: "watch".into(),
        model: None,
        version: None,
        segment: "all".into(),
        condition,
        for_windows: 1,
        resolve_after: 1,
        cooldown_windows: 100,
        severity: Severity::Warning,
        channels: Vec::new(),
        retrain: false,
    }
}

/// Evaluates one "charges" series per value; the windows where `rule`
/// fired, with the finding's threshold.
fn fired_on(rule: Rule, values: &[f64]) -> Vec<(usize, f64)> {
    let mut evaluator = AlertEvaluator::new(vec![rule]);
    let mut fired = Vec::new();
    for (w, value) in values.iter().enumerate() {
        for alert in evaluator.evaluate("churn", &[series(w as i64, "charges", *value)]) {
            if alert.status == AlertStatus::Firing {
                fired.push((w, alert.findings[0].threshold));
            }
        }
    }
    fired
}

#[test]
fn a_band_fires_outside_mean_plus_minus_k_sigma_of_the_first_windows() {
    let rule = rule_on(Condition::Band {
        feature: "charges".into(),
        metric: "psi".into(),
        k: 2.0,
        baseline_windows: 4,
    });
    // Baseline 0.01, 0.03, 0.02, 0.04: mean 0.025, sample σ = 0.0129099…,
    // band [-0.000820, 0.050820].
    let sigma = (0.0005f64 / 3.0).sqrt();
    let upper = 0.025 + 2.0 * sigma;
    let values = [0.01, 0.03, 0.02, 0.04, 0.05, 0.051, 0.02, 0.2];
    let fired = fired_on(rule, &values);
    assert_eq!(fired.len(), 2, "{fired:?}");
    assert_eq!(fired[0].0, 5, "0.05 is inside, 0.051 outside");
    assert!((fired[0].1 - upper).abs() < 1e-12);
    assert_eq!(fired[1].0, 7, "resolved at 6, fired again at 7");
}

#[test]
fn change_detectors_fire_on_a_shift_in_a_window_series() {
    // Page-Hinkley with threshold 0.5 over PSI values: stable at 0.02 for
    // ten windows, then 0.4. Its cumulative sum crosses 0.5 at the second
    // shifted window (computed by hand from the recurrence: deviations
    // 0.4 − mean ≈ 0.345 and 0.4 − 0.0517 ≈ 0.348, minus δ each).
    let page_hinkley = rule_on(Condition::Change {
        feature: "charges".into(),
        metric: "psi".into(),
        detector: alerting::rules::ChangeDetector::PageHinkley,
        delta: None,
        threshold: Some(0.5),
        min_windows: None,
    });
    let mut values = vec![0.02; 10];
    values.extend([0.4; 6]);
    let fired = fired_on(page_hinkley, &values);
    assert_eq!(fired.first().map(|f| f.0), Some(11), "{fired:?}");
    assert!(fired.iter().all(|f| f.1 == 0.5));

    // ADWIN over the same series cuts once the two sub-windows' means
    // differ beyond its bound; it must not fire on the stable part.
    let adwin = rule_on(Condition::Change {
        feature: "charges".into(),
        metric: "psi".into(),
        detector: alerting::rules::ChangeDetector::Adwin,
        delta: None,
        threshold: None,
        min_windows: None,
    });
    // With δ = 0.002 and values in [0, 1], a jump of 0.88 needs about 20
    // windows either side before the Hoeffding-style bound is beaten.
    let mut values = vec![0.02; 40];
    values.extend([0.9; 40]);
    let fired = fired_on(adwin, &values);
    assert!(!fired.is_empty(), "ADWIN saw no change");
    assert!(
        (40..70).contains(&fired[0].0),
        "fired on the stable part or too late: {fired:?}"
    );

    // A stable series never fires either detector.
    for detector in [
        alerting::rules::ChangeDetector::PageHinkley,
        alerting::rules::ChangeDetector::Adwin,
    ] {
        let rule = rule_on(Condition::Change {
            feature: "charges".into(),
            metric: "psi".into(),
            detector,
            delta: None,
            threshold: Some(0.5)
                .filter(|_| detector == alerting::rules::ChangeDetector::PageHinkley),
            min_windows: None,
        });
        assert!(fired_on(rule, &[0.02; 40]).is_empty(), "{detector:?}");
    }
}

/// A window with labels only (predictions stopped): its only input series
/// has too few values for a verdict.
fn label_only_window(w: i64) -> Vec<WindowMetrics> {
    let mut labels = series(w, "actual.label", 0.0);
    labels.metrics.count = 12;
    labels.metrics.psi = None;
    labels.metrics.drifted = None;
    labels.metrics.tests.clear();
    vec![labels]
}

#[test]
fn windows_without_a_verdict_neither_fire_nor_clear() {
    let mut evaluator = AlertEvaluator::new(vec![drift_rule()]);
    let mut notifications = Vec::new();
    for w in 0..10 {
        let metrics = match w {
            // Drift, then predictions stop: only late labels arrive.
            2..=3 => window(w, true),
            4..=7 => label_only_window(w),
            // Traffic resumes, still drifting, then clear.
            8 => window(w, true),
            _ => window(w, false),
        };
        for alert in evaluator.evaluate("churn", &metrics) {
            notifications.push((w, alert.status));
        }
    }
    assert_eq!(
        notifications,
        vec![(2, AlertStatus::Firing)],
        "the label-only windows must not resolve the alert (nor would one clear window)"
    );
    // A second clear window resolves it.
    let resolved = evaluator.evaluate("churn", &window(10, false));
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0].status, AlertStatus::Resolved);
}

/// The `estimated_quality` series of window `w` with an estimated ROC AUC
/// (band [0.78, 0.82]); `None`: the window has no estimate.
fn estimated_window(w: i64, roc_auc: Option<f64>) -> Vec<WindowMetrics> {
    let mut record = series(w, "estimated_quality", 0.0);
    record.metrics = FeatureWindowMetrics::empty(
        FeatureKind::EstimatedQuality,
        1000,
        0,
        0,
        DriftThresholds::default(),
    );
    record.metrics.estimated = roc_auc
        .map(|value| detectors::estimation::EstimatedMetric {
            metric: detectors::estimation::PerformanceMetric::RocAuc,
            value,
            sampling_error: Some(0.0067),
            lower_threshold: Some(0.78),
            upper_threshold: Some(0.82),
            alert: !(0.78..=0.82).contains(&value),
        })
        .into_iter()
        .collect();
    vec![record]
}

#[test]
fn estimated_performance_fires_outside_its_band_and_waits_without_an_estimate() {
    let rule: Rule = Rule::from_raw(
        toml::from_str(
            "name = \"auc\"\ncondition = { type = \"estimated_performance\", metric = \"roc_auc\" }\nresolve_after = 1",
        )
        .unwrap(),
        "alerts.rules[0]",
    )
    .unwrap();
    let mut evaluator = AlertEvaluator::new(vec![rule]);
    let mut events = Vec::new();
    for (w, value) in [Some(0.80), Some(0.75), None, Some(0.76), Some(0.81)]
        .into_iter()
        .enumerate()
    {
        for alert in evaluator.evaluate("churn", &estimated_window(w as i64, value)) {
            events.push((w, alert.status, alert.findings.first().cloned()));
        }
    }
    // Fires at 0.75 (below 0.78); a window without an estimate neither
    // resolves nor repeats it; 0.81 resolves it.
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!((events[0].0, events[0].1), (1, AlertStatus::Firing));
    let finding = events[0].2.as_ref().unwrap();
    assert_eq!(finding.feature, "estimated_quality");
    assert_eq!(finding.test, "estimated roc_auc");
    assert_eq!((finding.value, finding.threshold), (0.75, 0.78));
    assert_eq!((events[1].0, events[1].1), (4, AlertStatus::Resolved));
}

/// The `multivariate` series of window `w` with a mean reconstruction error
/// (band [1.0, 1.2]); `None`: too few rows for a verdict.
fn multivariate_window(w: i64, mean: f64, verdict: bool) -> Vec<WindowMetrics> {
    let mut record = series(w, "multivariate", 0.0);
    record.metrics = FeatureWindowMetrics::empty(
        FeatureKind::Multivariate,
        1000,
        0,
        0,
        DriftThresholds::default(),
    );
    record.metrics.mean = Some(mean);
    record.metrics.reconstruction_lower = Some(1.0);
    record.metrics.reconstruction_upper = Some(1.2);
    record.metrics.drifted = verdict.then(|| !(1.0..=1.2).contains(&mean));
    vec![record]
}

#[test]
fn multivariate_drift_fires_outside_the_band_and_is_not_a_drifted_input() {
    let rule: Rule = Rule::from_raw(
        toml::from_str(
            "name = \"mv\"\ncondition = { type = \"multivariate_drift\" }\nresolve_after = 1",
        )
        .unwrap(),
        "alerts.rules[0]",
    )
    .unwrap();
    let drift: Rule = Rule::from_raw(
        toml::from_str("name = \"drift\"\ncondition = { type = \"drift\", min_features = 1 }")
            .unwrap(),
        "alerts.rules[1]",
    )
    .unwrap();
    let mut evaluator = AlertEvaluator::new(vec![rule, drift]);
    let mut events = Vec::new();
    for (w, (mean, verdict)) in [
        (1.1, true),
        (1.5, true),
        (1.6, false),
        (1.4, true),
        (1.05, true),
    ]
    .into_iter()
    .enumerate()
    {
        for alert in evaluator.evaluate("churn", &multivariate_window(w as i64, mean, verdict)) {
            events.push((
                w,
                alert.rule.clone(),
                alert.status,
                alert.findings.first().cloned(),
            ));
        }
    }
    // Fires at 1.5 (above 1.2); a window without a verdict neither resolves
    // nor repeats it; 1.05 resolves it. The drift rule never sees the
    // series as a drifted input.
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(
        (events[0].0, events[0].1.as_str(), events[0].2),
        (1, "mv", AlertStatus::Firing)
    );
    let finding = events[0].3.as_ref().unwrap();
    assert_eq!(finding.feature, "multivariate");
    assert_eq!(finding.test, "reconstruction error");
    assert_eq!((finding.value, finding.threshold), (1.5, 1.2));
    assert_eq!((events[1].0, events[1].2), (4, AlertStatus::Resolved));
}
