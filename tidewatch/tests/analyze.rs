//! `tidewatch analyze` on files, as a user runs it.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

/// `reference.csv` and `current.csv` in `directory`.
fn csv_pair(directory: &std::path::Path) -> (PathBuf, PathBuf) {
    (
        directory.join("reference.csv"),
        directory.join("current.csv"),
    )
}

fn temp_dir(name: &str) -> PathBuf {
    let directory =
        std::env::temp_dir().join(format!("tidewatch-analyze-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&directory);
    std::fs::create_dir_all(&directory).unwrap();
    directory
}

/// `rows` rows of: ts (epoch ms, one row a minute), amount (numeric),
/// plan (categorical), stable (numeric, never drifts). From row `drift_from`
/// on, amount shifts up and plan gains "enterprise".
fn write_csv(path: &std::path::Path, rows: usize, drift_from: usize) {
    write_csv_shifted(path, rows, drift_from, 40.0);
}

fn write_csv_shifted(path: &std::path::Path, rows: usize, drift_from: usize, shift: f64) {
    let mut text = String::from("ts,amount,plan,stable\n");
    for i in 0..rows {
        let drifted = i >= drift_from;
        let amount = (i * 7919 % 1000) as f64 / 10.0 + if drifted { shift } else { 0.0 };
        let plan = match (i % 4, drifted) {
            (0, true) | (1, true) => "enterprise",
            (0, _) => "basic",
            (1, _) | (2, _) => "pro",
            _ => "team",
        };
        let stable = (i * 104_729 % 997) as f64;
        let _ = writeln!(
            text,
            "{},{amount},{plan},{stable}",
            1_767_571_200_000i64 + i as i64 * 60_000
        );
    }
    std::fs::write(path, text).unwrap();
}

fn analyze(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tidewatch"))
        .arg("analyze")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn chunks_by_rows_find_the_drifted_chunk_and_gate_ci() {
    let directory = temp_dir("rows");
    let (reference, current) = csv_pair(&directory);
    write_csv(&reference, 5_000, usize::MAX);
    write_csv(&current, 3_000, 2_000);
    let args = [
        "--reference",
        reference.to_str().unwrap(),
        "--current",
        current.to_str().unwrap(),
        "--chunk-size",
        "1000",
        "--columns",
        "amount,plan,stable",
        "--format",
        "json",
        "--fail-on-drift",
    ];
    let output = analyze(&args);
    assert_eq!(
        output.status.code(),
        Some(1),
        "drift with --fail-on-drift exits 1: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["first_drift_chunk"], 2);
    assert_eq!(report["drifted_per_chunk"], serde_json::json!([0, 0, 2]));
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 9);
    let find = |chunk: u64, column: &str| {
        results
            .iter()
            .find(|r| r["chunk"] == chunk && r["column"] == column)
            .unwrap()
            .clone()
    };
    assert_eq!(find(2, "amount")["drifted"], true);
    assert_eq!(find(2, "plan")["drifted"], true);
    assert_eq!(find(2, "stable")["drifted"], false);
    assert_eq!(find(0, "amount")["metrics"]["count"], 1000);
    assert_eq!(find(2, "plan")["metrics"]["unseen_categories"], 500);
    assert_eq!(find(2, "plan")["metrics"]["kind"], "categorical");

    // Without the gate the same drift exits 0; the table names the onset.
    let table = analyze(&args[..8]);
    assert!(table.status.success());
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("drift from chunk 2 (rows 2000-2999) on, by auto: amount, plan"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&directory);
}

#[test]
fn chunks_by_period_and_csv_output() {
    let directory = temp_dir("period");
    let (reference, current) = csv_pair(&directory);
    write_csv(&reference, 3_000, usize::MAX);
    write_csv(&current, 1_440, 720);
    let output = analyze(&[
        "--reference",
        reference.to_str().unwrap(),
        "--current",
        current.to_str().unwrap(),
        "--chunk-period",
        "6h",
        "--timestamp-column",
        "ts",
        "--format",
        "csv",
        "--decide-by",
        "any",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let csv = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "chunk,chunk_label,column,kind,count,missing_rate,test,value,threshold,drifted"
    );
    // Four 6-hour chunks of 360 rows; the timestamp column is not compared.
    assert!(lines
        .iter()
        .any(|l| l.starts_with("3,2026-01-05 18:00,amount,numeric,360,0,psi,")));
    assert!(!csv.contains(",ts,"));
    let psi_drifted = |chunk: &str, column: &str| {
        lines
            .iter()
            .find(|l| {
                l.starts_with(&format!("{chunk},"))
                    && l.contains(&format!(",{column},"))
                    && l.contains(",psi,")
            })
            .map(|l| l.ends_with(",true"))
            .unwrap()
    };
    assert!(!psi_drifted("0", "amount"));
    assert!(psi_drifted("2", "amount"));
    let _ = std::fs::remove_dir_all(&directory);
}

#[test]
fn unknown_columns_and_types_are_clear_errors() {
    let directory = temp_dir("errors");
    let reference = directory.join("reference.csv");
    write_csv(&reference, 100, usize::MAX);
    let output = analyze(&[
        "--reference",
        reference.to_str().unwrap(),
        "--current",
        reference.to_str().unwrap(),
        "--columns",
        "nope",
    ]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("column `nope` is not in"));
    let output = analyze(&[
        "--reference",
        reference.to_str().unwrap(),
        "--current",
        "data.xlsx",
    ]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("unsupported file type"));
    let _ = std::fs::remove_dir_all(&directory);
}

#[test]
fn bands_catch_a_shift_too_small_for_the_static_psi_threshold() {
    let directory = temp_dir("bands");
    let (reference, current) = csv_pair(&directory);
    write_csv(&reference, 10_000, usize::MAX);
    // From row 1000 on, amount moves up by 5 (a twentieth of its range).
    write_csv_shifted(&current, 2_000, 1_000, 5.0);
    let output = analyze(&[
        "--reference",
        reference.to_str().unwrap(),
        "--current",
        current.to_str().unwrap(),
        "--chunk-size",
        "1000",
        "--columns",
        "amount,stable",
        "--format",
        "json",
        "--bands",
        "3",
        "--decide-by",
        "mean_band",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let results = report["results"].as_array().unwrap();
    let test = |chunk: u64, column: &str, name: &str| {
        let result = results
            .iter()
            .find(|r| r["chunk"] == chunk && r["column"] == column)
            .unwrap();
        result["metrics"]["tests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["test"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(
        test(1, "amount", "psi")["drifted"],
        false,
        "PSI stays under 0.2"
    );
    assert_eq!(test(1, "amount", "mean_band")["drifted"], true);
    assert!(test(1, "amount", "mean_band")["value"].as_f64().unwrap() > 3.0);
    assert_eq!(test(0, "amount", "mean_band")["drifted"], false);
    assert_eq!(test(1, "stable", "mean_band")["drifted"], false);
    assert_eq!(report["first_drift_chunk"], 1);
    let _ = std::fs::remove_dir_all(&directory);
}

/// `tidewatch analyze` in JSON on `fixtures/nannyml/{case}_reference.parquet`
/// against `{case}_analysis.parquet` with `args`, and NannyML's values for
/// the same files (`{case}_expected.json`).
fn against_nannyml(case: &str, args: &[&str]) -> (serde_json::Value, serde_json::Value) {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/nannyml");
    let expected = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join(format!("{case}_expected.json"))).unwrap(),
    )
    .unwrap();
    let reference = fixtures.join(format!("{case}_reference.parquet"));
    let current = fixtures.join(format!("{case}_analysis.parquet"));
    let mut all = vec![
        "--reference",
        reference.to_str().unwrap(),
        "--current",
        current.to_str().unwrap(),
        "--format",
        "json",
    ];
    all.extend_from_slice(args);
    let output = analyze(&all);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    (expected, serde_json::from_slice(&output.stdout).unwrap())
}

/// CBPE against NannyML's on the same files (`fixtures/nannyml/generate.py`:
/// a binary classifier with overconfident scores, ten chunks of 5,000 rows,
/// covariate shift from chunk 5, no concept shift).
#[test]
fn estimated_performance_matches_nannyml_and_tracks_the_realized() {
    let (expected, report) = against_nannyml(
        "cbpe",
        &[
            "--chunk-size",
            "5000",
            "--score-column",
            "score",
            "--prediction-column",
            "y_pred",
            "--target-column",
            "y_true",
        ],
    );
    assert_eq!(
        report["calibrated"], expected["needs_calibration"],
        "the calibration decision"
    );
    let performance = report["performance"].as_array().unwrap();
    let chunks = expected["chunks"].as_array().unwrap();
    assert_eq!(chunks.len(), 10);
    let mut alerts = 0;
    for chunk in chunks {
        let index = chunk["index"].as_u64().unwrap();
        for metric in ["accuracy", "roc_auc", "f1", "precision", "recall"] {
            let ours = performance
                .iter()
                .find(|p| p["chunk"] == index && p["metric"] == metric)
                .unwrap_or_else(|| panic!("no {metric} in chunk {index}"));
            let theirs = &chunk[metric];
            let value = |v: &serde_json::Value| v.as_f64().unwrap();
            let label = format!("chunk {index} {metric}: ours {ours}, NannyML {theirs}");
            let tolerance = if matches!(metric, "accuracy" | "roc_auc") {
                0.01
            } else {
                0.015
            };
            assert!(
                (value(&ours["estimated"]) - value(&theirs["estimated"])).abs() < tolerance,
                "{label}"
            );
            // The same chunks flagged; thresholds from the same realized
            // reference chunks, so equal.
            assert_eq!(ours["alert"], theirs["alert"], "{label}");
            alerts += usize::from(ours["alert"] == true);
            for (mine, nannyml) in [
                ("lower_threshold", "lower_threshold"),
                ("upper_threshold", "upper_threshold"),
            ] {
                assert!(
                    (value(&ours[mine]) - value(&theirs[nannyml])).abs() < 1e-9,
                    "{label}"
                );
            }
            assert!(
                (value(&ours["sampling_error"]) / value(&theirs["sampling_error"]) - 1.0).abs()
                    < 1e-3,
                "{label}"
            );
        }
        // Only covariate shift: the estimate is within 0.02 of the realized
        // accuracy, which the current file's labels give.
        let accuracy = performance
            .iter()
            .find(|p| p["chunk"] == index && p["metric"] == "accuracy")
            .unwrap();
        let realized = accuracy["realized"].as_f64().unwrap();
        assert!(
            (realized - chunk["realized_accuracy"].as_f64().unwrap()).abs() < 1e-12,
            "realized accuracy of chunk {index}"
        );
        assert!(
            (accuracy["estimated"].as_f64().unwrap() - realized).abs() < 0.02,
            "chunk {index}: {accuracy}"
        );
    }
    // NannyML flags every metric in the five shifted chunks, and only there.
    assert_eq!(alerts, 25);
}

/// Multivariate drift against NannyML's data reconstruction on the same
/// files (`fixtures/nannyml/generate.py`): x1 and x2 related, x3 and a
/// categorical plan independent; from chunk 5 the relation of x1 and x2 is
/// reversed while every marginal stays the same.
#[test]
fn reconstruction_error_matches_nannyml_and_catches_a_flipped_correlation() {
    let (expected, report) = against_nannyml("dre", &["--chunk-size", "2500", "--multivariate"]);
    assert_eq!(report["components"], expected["components"]);
    let ours = report["multivariate"].as_array().unwrap();
    let chunks = expected["chunks"].as_array().unwrap();
    assert_eq!(ours.len(), chunks.len());
    for (mine, theirs) in ours.iter().zip(chunks) {
        let close = |a: &serde_json::Value, b: &serde_json::Value| match (a.as_f64(), b.as_f64()) {
            (Some(a), Some(b)) => (a - b).abs() < 1e-6,
            (None, None) => true,
            _ => false,
        };
        for (key, nannyml) in [
            ("reconstruction_error", "reconstruction_error"),
            ("sampling_error", "sampling_error"),
            ("lower_threshold", "lower_threshold"),
            ("upper_threshold", "upper_threshold"),
        ] {
            assert!(
                close(&mine[key], &theirs[nannyml]),
                "chunk {}: {key} {} vs NannyML {}",
                theirs["index"],
                mine[key],
                theirs[nannyml]
            );
        }
        assert_eq!(mine["alert"], theirs["alert"], "chunk {}", theirs["index"]);
        // Flagged exactly where the relation is reversed.
        assert_eq!(
            mine["alert"],
            theirs["index"].as_u64().unwrap() >= 5,
            "chunk {}",
            theirs["index"]
        );
    }
    // No single column drifted: the marginals did not move. `auto` decides
    // these 2,500-row chunks by KS and chi-square p-values, which flag about
    // α of unchanged columns, so allow one such flag over the forty.
    let drifted: usize = report["drifted_per_chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .sum();
    assert!(
        drifted <= 1,
        "{drifted} column flags: {}",
        report["drifted_per_chunk"]
    );
}

/// Direct loss estimation against NannyML's on the same files
/// (`fixtures/nannyml/generate.py`: a regressor whose errors grow with |x1|,
/// ten chunks of 5,000 rows, x1 moved up from chunk 5). NannyML fits
/// LightGBM, Tidewatch forust-ml's trees set alike: the estimates are not
/// equal, but close, and they flag the same chunks.
#[test]
fn direct_loss_estimation_matches_nannyml_and_tracks_the_realized() {
    let (expected, report) = against_nannyml(
        "dle",
        &[
            "--chunk-size",
            "5000",
            "--regression",
            "--prediction-column",
            "y_pred",
            "--target-column",
            "y_true",
        ],
    );
    let performance = report["performance"].as_array().unwrap();
    let chunks = expected["chunks"].as_array().unwrap();
    assert_eq!(chunks.len(), 10);
    let mut largest = [0.0f64; 2];
    for chunk in chunks {
        let index = chunk["index"].as_u64().unwrap();
        for (slot, metric) in ["mae", "rmse"].into_iter().enumerate() {
            let ours = performance
                .iter()
                .find(|p| p["chunk"] == index && p["metric"] == metric)
                .unwrap_or_else(|| panic!("no {metric} for chunk {index}"));
            let theirs = &chunk[metric];
            let estimated = ours["estimated"].as_f64().unwrap();
            let nannyml = theirs["estimated"].as_f64().unwrap();
            let relative = (estimated - nannyml).abs() / nannyml;
            largest[slot] = largest[slot].max(relative);
            // Different tree learners: within 2 % of NannyML's estimate (0.7 % measured).
            assert!(
                relative < 0.02,
                "chunk {index} {metric}: {estimated} against NannyML's {nannyml}"
            );
            // The same sampling error and thresholds (no learner in them).
            for field in ["sampling_error", "lower_threshold", "upper_threshold"] {
                let (a, b) = (
                    ours[field].as_f64().unwrap(),
                    theirs[field].as_f64().unwrap(),
                );
                assert!(
                    (a - b).abs() <= 1e-9 * b.abs().max(1.0),
                    "chunk {index} {metric} {field}: {a} against {b}"
                );
            }
            assert_eq!(ours["alert"], theirs["alert"], "chunk {index} {metric}");
            assert_eq!(
                theirs["alert"],
                index >= 5,
                "NannyML flags the shifted chunks"
            );
            // Covariate shift only: the estimate tracks the realized value.
            let realized = chunk[format!("realized_{metric}")].as_f64().unwrap();
            assert!(
                (ours["realized"].as_f64().unwrap() - realized).abs() < 1e-9,
                "chunk {index} {metric} realized"
            );
            assert!(
                (estimated - realized).abs() < 0.05 * realized,
                "chunk {index} {metric}: estimated {estimated}, realized {realized}"
            );
        }
    }
    eprintln!(
        "largest relative difference from NannyML: MAE {:.4}, RMSE {:.4}",
        largest[0], largest[1]
    );
}

/// Multiclass CBPE against NannyML's on the same files
/// (`fixtures/nannyml/generate.py`: three classes, overconfident
/// probabilities, ten chunks of 5,000 rows, covariate shift from chunk 5).
#[test]
fn multiclass_estimated_performance_matches_nannyml() {
    let (expected, report) = against_nannyml(
        "mc",
        &[
            "--chunk-size",
            "5000",
            "--class-score-column",
            "a=p_a",
            "--class-score-column",
            "b=p_b",
            "--class-score-column",
            "c=p_c",
            "--prediction-column",
            "y_pred",
            "--target-column",
            "y_true",
        ],
    );
    let performance = report["performance"].as_array().unwrap();
    let chunks = expected["chunks"].as_array().unwrap();
    assert_eq!(chunks.len(), 10);
    for chunk in chunks {
        let index = chunk["index"].as_u64().unwrap();
        let ours = |metric: &str| {
            performance
                .iter()
                .find(|p| p["chunk"] == index && p["metric"] == metric)
                .unwrap_or_else(|| panic!("no {metric} for chunk {index}"))
        };
        for metric in ["accuracy", "precision", "recall", "f1", "roc_auc"] {
            let (ours, theirs) = (ours(metric), &chunk[metric]);
            for field in [
                "estimated",
                "sampling_error",
                "lower_threshold",
                "upper_threshold",
            ] {
                let (a, b) = (
                    ours[field].as_f64().unwrap(),
                    theirs[field].as_f64().unwrap(),
                );
                assert!(
                    (a - b).abs() < 1e-9,
                    "chunk {index} {metric} {field}: {a} against NannyML's {b}"
                );
            }
            assert_eq!(ours["alert"], theirs["alert"], "chunk {index} {metric}");
            assert_eq!(
                theirs["alert"],
                index >= 5,
                "the shifted chunks are flagged"
            );
        }
        for metric in ["accuracy", "f1", "roc_auc"] {
            let realized = ours(metric)["realized"].as_f64().unwrap();
            let sklearn = chunk[format!("realized_{metric}")].as_f64().unwrap();
            assert!(
                (realized - sklearn).abs() < 1e-9,
                "chunk {index} realized {metric}"
            );
        }
        // Covariate shift only: the estimate tracks the realized accuracy.
        let estimated = ours("accuracy")["estimated"].as_f64().unwrap();
        let realized = chunk["realized_accuracy"].as_f64().unwrap();
        assert!(
            (estimated - realized).abs() < 0.02,
            "chunk {index}: accuracy estimated {estimated}, realized {realized}"
        );
    }
}

/// `csv` rewritten by arrow as `format` (parquet, arrow, jsonl) beside it.
fn convert(csv: &std::path::Path, format: &str) -> PathBuf {
    use std::sync::Arc;
    let file = std::fs::File::open(csv).unwrap();
    let csv_format = arrow::csv::reader::Format::default().with_header(true);
    let (schema, _) = csv_format.infer_schema(&file, None).unwrap();
    let schema = Arc::new(schema);
    let reader = arrow::csv::ReaderBuilder::new(schema.clone())
        .with_format(csv_format)
        .with_batch_size(1_000)
        .build(std::fs::File::open(csv).unwrap())
        .unwrap();
    let batches: Vec<arrow::array::RecordBatch> = reader.map(Result::unwrap).collect();
    let path = csv.with_extension(format);
    let output = std::fs::File::create(&path).unwrap();
    match format {
        "parquet" => {
            let mut writer = parquet::arrow::ArrowWriter::try_new(output, schema, None).unwrap();
            for batch in &batches {
                writer.write(batch).unwrap();
            }
            writer.close().unwrap();
        }
        "arrow" => {
            let mut writer = arrow::ipc::writer::FileWriter::try_new(output, &schema).unwrap();
            for batch in &batches {
                writer.write(batch).unwrap();
            }
            writer.finish().unwrap();
        }
        _ => {
            let mut writer = arrow::json::LineDelimitedWriter::new(output);
            for batch in &batches {
                writer.write(batch).unwrap();
            }
            writer.finish().unwrap();
        }
    }
    path
}

#[test]
fn every_file_format_gives_the_same_report() {
    // Columnar files are read column by column on every core, row files
    // once with every column: both paths, nulls, text read as numbers and
    // numbers read as categories, chunks by period and reference bands.
    let directory = temp_dir("formats");
    let (reference, current) = csv_pair(&directory);
    let write = |path: &std::path::Path, rows: usize, drift_from: usize| {
        let mut text = String::from("ts,amount,plan,stable,code,quoted\n");
        for i in 0..rows {
            let drifted = i >= drift_from;
            let amount = (i * 7919 % 1000) as f64 / 10.0 + if drifted { 7.25 } else { 0.0 };
            let amount = if i % 37 == 0 {
                String::new()
            } else {
                format!("{amount}")
            };
            let plan = match (i % 4, drifted) {
                (0, true) => "enterprise",
                _ if i % 53 == 0 => "",
                (0, _) => "basic",
                (1, _) | (2, _) => "pro",
                _ => "team",
            };
            let stable = (i * 104_729 % 997) as f64 / 7.0;
            let code = i % 5 + usize::from(drifted && i % 3 == 0);
            let quoted = if i % 41 == 0 {
                "n/a".to_owned()
            } else {
                format!("q{}", i % 13)
            };
            let _ = writeln!(
                text,
                "{},{amount},{plan},{stable},{code},{quoted}",
                1_767_571_200_000i64 + i as i64 * 60_000
            );
        }
        std::fs::write(path, text).unwrap();
    };
    write(&reference, 6_000, usize::MAX);
    write(&current, 2_880, 1_500);
    let report = |reference: &std::path::Path, current: &std::path::Path| {
        let output = analyze(&[
            "--reference",
            reference.to_str().unwrap(),
            "--current",
            current.to_str().unwrap(),
            "--chunk-period",
            "6h",
            "--timestamp-column",
            "ts",
            "--categorical",
            "code",
            // In file order otherwise, which JSON lines infer from the
            // first rows' keys (the writer leaves out nulls).
            "--columns",
            "amount,plan,stable,code,quoted",
            "--format",
            "json",
            "--bands",
            "3",
            "--decide-by",
            "any",
        ]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()
    };
    let from_csv = report(&reference, &current);
    assert_eq!(from_csv["chunks"].as_array().unwrap().len(), 8);
    assert!(from_csv["first_drift_chunk"].as_u64().is_some());
    let results = from_csv["results"].as_array().unwrap();
    assert_eq!(
        results.len(),
        8 * 5,
        "five columns compared in eight chunks"
    );
    assert!(results.iter().any(|r| r["metrics"]["missing_rate"]
        .as_f64()
        .is_some_and(|m| m > 0.0)));
    for format in ["parquet", "arrow", "jsonl"] {
        let (reference, current) = (convert(&reference, format), convert(&current, format));
        assert!(
            report(&reference, &current) == from_csv,
            "{format} differs from CSV"
        );
    }
    // Mixed: a columnar reference against a row-file current.
    assert!(report(&reference.with_extension("parquet"), &current) == from_csv);
    let _ = std::fs::remove_dir_all(&directory);
}
