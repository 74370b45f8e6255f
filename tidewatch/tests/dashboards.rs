//! The Grafana dashboards in `dashboards/` against the real ClickHouse that
//! `scripts/test.sh` starts:
//!
//! - each dashboard's JSON has the structure Grafana imports (uid, title,
//!   schema version, panels with unique ids inside the 24-column grid,
//!   ClickHouse targets with SQL, template variables model / version /
//!   segment, alert annotations), and the provisioning files point at them;
//! - every query (panels, variables, annotations), with Grafana's variables
//!   and the ClickHouse plugin's macros expanded the way the plugin expands
//!   them, runs against ClickHouse loaded with the demo's windows, alerts and
//!   pipeline statistics, and returns rows with the expected columns.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;

use serde_json::Value;
use tidewatch::fixtures::{DemoShape, DEMO_MODEL, DEMO_START_MS, DEMO_VERSION};

const HOURS: i64 = 6;

fn dashboards_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dashboards")
}

fn clickhouse_url() -> String {
    std::env::var("TIDEWATCH_TEST_CLICKHOUSE_URL").expect(
        "TIDEWATCH_TEST_CLICKHOUSE_URL is not set: run the integration suite through scripts/test.sh, \
         which installs and starts ClickHouse",
    )
}

fn dashboards() -> Vec<(String, Value)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dashboards_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            let value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            found.push((name, value));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

#[test]
fn the_dashboards_have_the_structure_grafana_imports() {
    let found = dashboards();
    let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "tidewatch-feature-drift",
            "tidewatch-model-quality",
            "tidewatch-operations",
            "tidewatch-overview"
        ]
    );
    for (name, dashboard) in &found {
        assert_eq!(dashboard["uid"], name.as_str(), "uid is the file name");
        assert!(dashboard["title"]
            .as_str()
            .is_some_and(|t| t.starts_with("Tidewatch")));
        assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
        assert!(
            dashboard.get("id").is_none(),
            "{name}: no instance id, so it imports anywhere"
        );
        let variables: Vec<&str> = dashboard["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        for required in ["datasource", "model", "version", "segment"] {
            assert!(variables.contains(&required), "{name}: variable {required}");
        }
        let annotations = dashboard["annotations"]["list"].as_array().unwrap();
        assert!(
            annotations.iter().any(
                |a| a["datasource"]["type"] == "grafana-clickhouse-datasource"
                    && a["target"]["rawSql"]
                        .as_str()
                        .unwrap()
                        .contains("FROM alerts")
            ),
            "{name}: alerts as annotations"
        );
        assert!(
            annotations.iter().any(|a| a["target"]["rawSql"]
                .as_str()
                .is_some_and(|sql| sql.contains("FROM version_events"))),
            "{name}: version lifecycle as annotations"
        );
        let panels = dashboard["panels"].as_array().unwrap();
        assert!(panels.len() >= 4, "{name}");
        let mut ids = std::collections::BTreeSet::new();
        for panel in panels {
            let title = panel["title"].as_str().unwrap();
            assert!(
                ids.insert(panel["id"].as_u64().unwrap()),
                "{name}: duplicate id"
            );
            assert!(
                ["timeseries", "table", "heatmap", "stat", "barchart"]
                    .contains(&panel["type"].as_str().unwrap()),
                "{name}/{title}: panel type"
            );
            let grid = &panel["gridPos"];
            let (x, w, h) = (
                grid["x"].as_u64().unwrap(),
                grid["w"].as_u64().unwrap(),
                grid["h"].as_u64().unwrap(),
            );
            assert!(x + w <= 24 && w > 0 && h > 0, "{name}/{title}: gridPos");
            let targets = panel["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{name}/{title}");
            for target in targets {
                assert_eq!(
                    target["datasource"]["type"],
                    "grafana-clickhouse-datasource"
                );
                assert_eq!(target["datasource"]["uid"], "${datasource}");
                assert_eq!(target["editorType"], "sql");
                assert!(target["refId"].as_str().is_some());
                let sql = target["rawSql"].as_str().unwrap();
                assert!(sql.starts_with("SELECT "), "{name}/{title}");
                assert!(
                    !sql.contains("$__timeInterval"),
                    "{name}/{title}: needs toStartOfInterval"
                );
            }
        }
    }
    // Provisioning: the data source uid is the dashboards' default, and the
    // dashboard provider is a file provider.
    let datasource =
        std::fs::read_to_string(dashboards_dir().join("provisioning/datasources/tidewatch.yaml"))
            .unwrap();
    assert!(datasource.contains("type: grafana-clickhouse-datasource"));
    assert!(datasource.contains("uid: tidewatch-clickhouse"));
    for (_, dashboard) in &found {
        assert_eq!(
            dashboard["templating"]["list"][0]["current"]["value"],
            "tidewatch-clickhouse"
        );
    }
    let provider =
        std::fs::read_to_string(dashboards_dir().join("provisioning/dashboards/tidewatch.yaml"))
            .unwrap();
    assert!(provider.contains("type: file"));
}

/// Expands Grafana's variables and the ClickHouse plugin's macros (as in
/// its `pkg/macros`: `$__timeFilter(c)` → `c >= toDateTime(from) AND c <=
/// toDateTime(to)`, `$__fromTime`/`$__toTime` → `toDateTime(s)`,
/// `$__interval_s` → seconds).
fn expand(
    sql: &str,
    variables: &BTreeMap<&str, Vec<&str>>,
    from: i64,
    to: i64,
    interval_s: u64,
) -> String {
    let mut sql = sql.to_owned();
    for (name, values) in variables {
        let quoted: Vec<String> = values.iter().map(|v| format!("'{v}'")).collect();
        sql = sql
            .replace(&format!("${{{name}:singlequote}}"), &quoted.join(","))
            .replace(&format!("${{{name}}}"), values[0]);
    }
    while let Some(start) = sql.find("$__timeFilter(") {
        let open = start + "$__timeFilter(".len();
        let close = open + sql[open..].find(')').unwrap();
        let column = sql[open..close].trim().to_owned();
        sql.replace_range(
            start..=close,
            &format!("{column} >= toDateTime({from}) AND {column} <= toDateTime({to})"),
        );
    }
    sql = sql
        .replace("$__fromTime", &format!("toDateTime({from})"))
        .replace("$__toTime", &format!("toDateTime({to})"))
        .replace("$__interval_s", &interval_s.to_string());
    assert!(!sql.contains('$'), "unexpanded variable or macro in {sql}");
    sql
}

/// Runs `sql` on ClickHouse in `database`: (column names and types, rows).
fn run(database: &str, sql: &str) -> (Vec<(String, String)>, Vec<Value>) {
    let url = clickhouse_url();
    let address = url.trim_start_matches("http://").trim_end_matches('/');
    let body = format!("{sql} FORMAT JSON");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "POST /?database={database} HTTP/1.0\r\nHost: {address}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, json) = response.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "ClickHouse refused:\n{sql}\n{json}"
    );
    let result: Value = serde_json::from_str(json).unwrap();
    let columns = result["meta"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_owned(),
                m["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    (columns, result["data"].as_array().unwrap().clone())
}

/// The columns each query must return, by "dashboard / panel / refId"
/// ("dashboard / $variable" for variables, "dashboard / annotations / name").
fn expected_columns() -> BTreeMap<&'static str, Vec<&'static str>> {
    let time_and = |columns: &[&'static str]| {
        let mut all = vec!["time"];
        all.extend_from_slice(columns);
        all
    };
    let mut expected = BTreeMap::from([
        ("tidewatch-overview / Models / A", vec!["model", "version", "latest_window", "windows"]),
        (
            "tidewatch-overview / Drifted series in the latest window / A",
            vec!["model", "version", "latest_window", "drifted_series", "drifted_features"],
        ),
        ("tidewatch-overview / Drifted series per window / A", time_and(&["model", "drifted_series"])),
        ("tidewatch-overview / Quality trend (accuracy; R² for regression) / A", time_and(&["model", "quality"])),
        (
            "tidewatch-overview / Open alerts / A",
            vec!["id", "model", "rule", "severity", "firing_since", "summary"],
        ),
        (
            "tidewatch-feature-drift / Drift heatmap: ${score} per series and window / A",
            time_and(&["feature", "drift_score"]),
        ),
        ("tidewatch-feature-drift / PSI (threshold dashed) / A", time_and(&["feature", "psi"])),
        ("tidewatch-feature-drift / PSI (threshold dashed) / B", time_and(&["threshold"])),
        (
            "tidewatch-feature-drift / Jensen-Shannon distance (threshold dashed) / A",
            time_and(&["feature", "js_distance"]),
        ),
        ("tidewatch-feature-drift / Jensen-Shannon distance (threshold dashed) / B", time_and(&["threshold"])),
        (
            "tidewatch-feature-drift / KS p-value (alpha dashed, corrected across series) / A",
            time_and(&["feature", "ks_p_value"]),
        ),
        ("tidewatch-feature-drift / KS p-value (alpha dashed, corrected across series) / B", time_and(&["alpha"])),
        ("tidewatch-feature-drift / KS statistic / A", time_and(&["feature", "ks_statistic"])),
        (
            "tidewatch-feature-drift / Reference vs current quantiles (latest window per series) / A",
            vec![
                "feature", "latest_window", "ref_p05", "p05", "ref_p25", "p25", "ref_p50", "p50", "ref_p75", "p75",
                "ref_p95", "p95",
            ],
        ),
        ("tidewatch-feature-drift / Missing rate / A", time_and(&["feature", "missing_rate"])),
        (
            "tidewatch-feature-drift / Values outside the reference range / unseen categories / A",
            time_and(&["feature", "outside_reference"]),
        ),
        (
            "tidewatch-feature-drift / Multivariate drift: mean reconstruction error (band dashed) / A",
            time_and(&["reconstruction_error", "lower", "upper"]),
        ),
        (
            "tidewatch-model-quality / Classification quality / A",
            time_and(&["accuracy", "precision", "recall", "f1", "roc_auc"]),
        ),
        (
            "tidewatch-model-quality / Estimated performance (before labels) against realized / A",
            time_and(&[
                "estimated_accuracy",
                "lower_accuracy",
                "upper_accuracy",
                "estimated_roc_auc",
                "lower_roc_auc",
                "upper_roc_auc",
            ]),
        ),
        (
            "tidewatch-model-quality / Estimated performance (before labels) against realized / B",
            time_and(&["realized_accuracy", "realized_roc_auc"]),
        ),
        (
            "tidewatch-model-quality / Estimated MAE and RMSE (regression, before targets) against realized / A",
            time_and(&[
                "estimated_mae",
                "lower_mae",
                "upper_mae",
                "estimated_rmse",
                "lower_rmse",
                "upper_rmse",
            ]),
        ),
        (
            "tidewatch-model-quality / Estimated MAE and RMSE (regression, before targets) against realized / B",
            time_and(&["realized_mae", "realized_rmse"]),
        ),
        ("tidewatch-model-quality / Regression quality / A", time_and(&["mae", "rmse", "mape", "r2"])),
        (
            "tidewatch-model-quality / Label coverage (share of predictions with their actual) / A",
            time_and(&["label_coverage"]),
        ),
        (
            "tidewatch-model-quality / Probabilistic quality: log loss, Brier, calibration error / A",
            time_and(&["log_loss", "brier", "calibration_error"]),
        ),
        ("tidewatch-model-quality / Prediction drift: PSI of scores and classes / A", time_and(&["feature", "psi"])),
        ("tidewatch-model-quality / Prediction drift: PSI of scores and classes / B", time_and(&["threshold"])),
        ("tidewatch-model-quality / Prediction score quantiles / A", time_and(&["p05", "p25", "p50", "p75", "p95"])),
        ("tidewatch-operations / Events consumed per second / A", time_and(&["topic", "events_per_second"])),
        ("tidewatch-operations / Consumer lag (messages) / A", time_and(&["topic", "lag"])),
        (
            "tidewatch-operations / Late and dead-lettered events / A",
            time_and(&["late_events", "dead_lettered_events"]),
        ),
        (
            "tidewatch-operations / Predictions per second (event time, per window) / A",
            time_and(&["predictions_per_second"]),
        ),
        (
            "tidewatch-operations / Serving latency / A",
            time_and(&["latency_p50", "latency_p95", "latency_p99", "latency_max"]),
        ),
        (
            "tidewatch-operations / Serving errors and null predictions / A",
            time_and(&["error_rate", "null_prediction_rate"]),
        ),
    ]);
    for dashboard in [
        "tidewatch-overview",
        "tidewatch-feature-drift",
        "tidewatch-model-quality",
        "tidewatch-operations",
    ] {
        expected.insert(
            leak(format!("{dashboard} / annotations / Tidewatch alerts")),
            vec!["time", "timeEnd", "text", "tags"],
        );
        expected.insert(
            leak(format!("{dashboard} / annotations / Tidewatch versions")),
            vec!["time", "text", "tags"],
        );
        expected.insert(leak(format!("{dashboard} / $model")), vec!["model"]);
        expected.insert(
            leak(format!("{dashboard} / $version")),
            vec!["model_version"],
        );
        expected.insert(leak(format!("{dashboard} / $segment")), vec!["segment"]);
    }
    expected.insert("tidewatch-feature-drift / $feature", vec!["feature"]);
    expected
}

fn leak(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_rows_with_the_expected_columns_from_clickhouse() {
    // Test data: the demo (drift from hour 3) into ClickHouse, its alerts,
    // and pipeline statistics over the same hours.
    let database = format!("tw_dashboards_{}", std::process::id());
    let store = store::Store::new(
        store::clickhouse_store::ClickHouseStore::connect(&clickhouse_url(), &database, None, None)
            .await
            .unwrap(),
    );
    let directory =
        std::env::temp_dir().join(format!("tidewatch-dashboards-{}", std::process::id()));
    let shape = DemoShape {
        hours: HOURS as u32,
        predictions_per_hour: 600,
        drift_onset_hour: 3,
        drift_end_hour: None,
        training_rows: 3_000,
    };
    tidewatch::demo::run_into(&directory, 11, shape, Some(store.clone()))
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&directory);
    let stats: Vec<store::PipelineStats> = (0..HOURS * 6)
        .map(|i| store::PipelineStats {
            time: DEMO_START_MS + i * 600_000,
            instance: "host-1".into(),
            topic: "predictions".into(),
            consumed: 6_000,
            dead_lettered: u64::from(i % 7 == 0),
            late: u64::from(i % 5 == 0),
            lag: 100 - i,
        })
        .collect();
    store.write_pipeline_stats(stats).await.unwrap();
    // An alert still open (the demo's drift alert resolves once predictions
    // stop and only late labels arrive).
    let open = store::AlertRecord {
        id: "tw-open-latency".into(),
        status: store::NotificationStatus::Firing,
        window_start: DEMO_START_MS + 4 * 3_600_000,
        window_end: DEMO_START_MS + 5 * 3_600_000,
        rule: "slow_serving".into(),
        model: DEMO_MODEL.into(),
        model_version: DEMO_VERSION.into(),
        segment: "all".into(),
        severity: store::Severity::Warning,
        repeat: false,
        summary: "[warning] slow_serving on churn v7: operations latency_p99=412.000".into(),
        payload: "{}".into(),
        created_at: 1,
    };
    store.record_alerts(vec![(open, Vec::new())]).await.unwrap();
    // The demo version's lifecycle as the registry's events record it:
    // registered before the stream, promoted to champion at its start.
    let lifecycle = [
        registry::events::Change::version_created(
            DEMO_MODEL,
            DEMO_VERSION.parse().unwrap(),
            "s3://models/churn/7",
            "run-7",
            &[],
            "",
        ),
        registry::events::Change::alias_created(
            DEMO_MODEL,
            "champion",
            DEMO_VERSION.parse().unwrap(),
        ),
    ];
    let rows: Vec<store::VersionEvent> = lifecycle
        .into_iter()
        .enumerate()
        .filter_map(|(i, change)| {
            tidewatch::lifecycle::version_event(&registry::events::RegistryEvent {
                sequence: i as i64 + 1,
                time_ms: DEMO_START_MS + i as i64 * 60_000,
                change,
            })
        })
        .collect();
    assert_eq!(rows.len(), 2);
    store.write_version_events(rows).await.unwrap();

    // A window as a regression model's version writes it (estimated MAE
    // and RMSE, then realized ones), after the demo's hours: the dashboards
    // filter one model and version, and the regression panels must find
    // their rows and columns too.
    let regression_window = DEMO_START_MS + (HOURS + 1) * 3_600_000;
    let key = |feature: &str| detectors::SeriesKey {
        window_start: regression_window,
        model: DEMO_MODEL.into(),
        model_version: DEMO_VERSION.into(),
        segment: "all".into(),
        feature: feature.into(),
    };
    let mut estimated = detectors::FeatureWindowMetrics::empty(
        detectors::spec::FeatureKind::EstimatedQuality,
        1_000,
        0,
        0,
        detectors::metrics::DriftThresholds::default(),
    );
    estimated.estimated = [
        (detectors::estimation::PerformanceMetric::Mae, 1.4),
        (detectors::estimation::PerformanceMetric::Rmse, 2.0),
    ]
    .into_iter()
    .map(|(metric, value)| detectors::estimation::EstimatedMetric {
        metric,
        value,
        sampling_error: Some(0.03),
        lower_threshold: Some(value - 0.3),
        upper_threshold: Some(value - 0.1),
        alert: true,
    })
    .collect();
    let mut quality = detectors::FeatureWindowMetrics::empty(
        detectors::spec::FeatureKind::Quality,
        800,
        0,
        0,
        detectors::metrics::DriftThresholds::default(),
    );
    quality.quality = Some(detectors::quality::QualityMetrics {
        matched: 800,
        mae: Some(1.45),
        rmse: Some(2.1),
        ..Default::default()
    });
    let record = |feature: &str, metrics| store::WindowMetrics {
        key: key(feature),
        window_end: regression_window + 3_600_000,
        metrics,
        reference_source: None,
        version: 1,
    };
    store
        .write_window_results(
            vec![
                record("estimated_quality", estimated),
                record("quality", quality),
            ],
            vec![],
        )
        .await
        .unwrap();
    let from = DEMO_START_MS / 1000;
    let to = from + (HOURS + 2) * 3600;
    let variables = BTreeMap::from([
        ("model", vec![DEMO_MODEL]),
        ("version", vec![DEMO_VERSION]),
        ("segment", vec!["all"]),
        (
            "feature",
            vec![
                "age",
                "monthly_charges",
                "payment_method",
                "prediction.score",
            ],
        ),
        ("score", vec!["psi"]),
    ]);
    let expected = expected_columns();
    let mut checked = Vec::new();
    for (name, dashboard) in dashboards() {
        let mut queries: Vec<(String, String, bool)> = Vec::new();
        for variable in dashboard["templating"]["list"].as_array().unwrap() {
            if variable["type"] == "query" {
                queries.push((
                    format!("{name} / ${}", variable["name"].as_str().unwrap()),
                    variable["query"].as_str().unwrap().to_owned(),
                    false,
                ));
            }
        }
        for annotation in dashboard["annotations"]["list"].as_array().unwrap() {
            if let Some(sql) = annotation["target"]["rawSql"].as_str() {
                queries.push((
                    format!(
                        "{name} / annotations / {}",
                        annotation["name"].as_str().unwrap()
                    ),
                    sql.to_owned(),
                    true,
                ));
            }
        }
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                queries.push((
                    format!(
                        "{name} / {} / {}",
                        panel["title"].as_str().unwrap(),
                        target["refId"].as_str().unwrap()
                    ),
                    target["rawSql"].as_str().unwrap().to_owned(),
                    target["format"] == 0,
                ));
            }
        }
        // Every option of the drift-score picker is a column the store
        // writes: the queries that use it run with each.
        let score_options: Vec<&str> = dashboard["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|variable| variable["name"] == "score")
            .flat_map(|variable| variable["options"].as_array().unwrap())
            .map(|option| option["value"].as_str().unwrap())
            .collect();
        for (key, sql, _) in queries
            .iter()
            .filter(|(_, sql, _)| sql.contains("${score}"))
        {
            for option in &score_options {
                let mut with_option = variables.clone();
                with_option.insert("score", vec![option]);
                let (_, rows) = run(&database, &expand(sql, &with_option, from, to, 600));
                assert!(!rows.is_empty(), "{key} with score {option}: no rows");
            }
        }
        for (key, sql, time_series) in queries {
            let sql = expand(&sql, &variables, from, to, 600);
            let (columns, rows) = run(&database, &sql);
            let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
            let want = expected
                .get(key.as_str())
                .unwrap_or_else(|| panic!("no expected columns for `{key}`"));
            assert_eq!(&names, want, "{key}");
            assert!(!rows.is_empty(), "{key}: no rows\n{sql}");
            if time_series {
                assert!(
                    columns[0].1.starts_with("DateTime"),
                    "{key}: time column is {}",
                    columns[0].1
                );
            }
            checked.push(key);
        }
    }
    // Every expectation was used: no stale entry hides a missing panel.
    let unused: Vec<&&str> = expected
        .keys()
        .filter(|k| !checked.iter().any(|c| c == *k))
        .collect();
    assert!(
        unused.is_empty(),
        "expectations without a query: {unused:?}"
    );

    // The drift shows: the heatmap query has drifted PSI for
    // monthly_charges after hour 3 and none for age.
    let heatmap = expand(
        "SELECT feature, countIf(psi >= psi_threshold) AS drifted_windows FROM window_metrics FINAL \
         WHERE model = '${model}' AND segment = 'all' AND feature IN (${feature:singlequote}) GROUP BY feature ORDER BY feature",
        &variables,
        from,
        to,
        600,
    );
    let (_, rows) = run(&database, &heatmap);
    let drifted: BTreeMap<String, u64> = rows
        .iter()
        .map(|r| {
            (
                r["feature"].as_str().unwrap().to_owned(),
                r["drifted_windows"].as_str().map_or_else(
                    || r["drifted_windows"].as_u64().unwrap(),
                    |s| s.parse().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(drifted["age"], 0);
    assert!(drifted["monthly_charges"] >= 3, "{drifted:?}");
}
