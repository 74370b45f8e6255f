//! Training data in CSV, JSON lines and Parquet gives the same reference
//! profile as feeding the values to the builder directly.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use detectors::reference::{ReferenceBuilder, TrainingValue};
use detectors::spec::{FeatureKind, FeatureSpec, ModelSpec, Task};
use tidewatch::training::build_reference;

fn spec() -> ModelSpec {
    ModelSpec::new(
        "m",
        Task::Classification,
        vec![
            FeatureSpec {
                name: "amount".into(),
                kind: FeatureKind::Numeric,
            },
            FeatureSpec {
                name: "count".into(),
                kind: FeatureKind::Numeric,
            },
            FeatureSpec {
                name: "plan".into(),
                kind: FeatureKind::Categorical,
            },
        ],
        vec![],
        10,
        10,
    )
    .unwrap()
}

struct Rows {
    amount: Vec<Option<f64>>,
    count: Vec<i64>,
    plan: Vec<Option<&'static str>>,
}

fn rows() -> Rows {
    let n = 500;
    Rows {
        amount: (0..n)
            .map(|i| (i % 37 != 0).then(|| (i as f64 * 1.37) % 91.0 - 10.5))
            .collect(),
        count: (0..n).map(|i| (i * 7) % 13).collect(),
        plan: (0..n)
            .map(|i| (i % 50 != 0).then_some(["basic", "pro", "team"][i as usize % 3]))
            .collect(),
    }
}

#[test]
fn csv_jsonl_and_parquet_give_the_profile_of_the_values() {
    let rows = rows();
    let directory = std::env::temp_dir().join(format!("tidewatch-training-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();

    let mut csv = String::from("amount,count,plan,ignored_column\n");
    let mut jsonl = String::new();
    for i in 0..rows.count.len() {
        let amount = rows.amount[i].map_or(String::new(), |a| a.to_string());
        csv.push_str(&format!(
            "{amount},{},{},x\n",
            rows.count[i],
            rows.plan[i].unwrap_or("")
        ));
        let amount_json = rows.amount[i].map_or("null".to_owned(), |a| a.to_string());
        let plan_json = rows.plan[i].map_or("null".to_owned(), |p| format!("\"{p}\""));
        jsonl.push_str(&format!(
            "{{\"amount\":{amount_json},\"count\":{},\"plan\":{plan_json}}}\n",
            rows.count[i]
        ));
    }
    std::fs::write(directory.join("train.csv"), csv).unwrap();
    std::fs::write(directory.join("train.jsonl"), jsonl).unwrap();
    let batch = RecordBatch::try_from_iter([
        (
            "amount",
            Arc::new(Float64Array::from(rows.amount.clone())) as ArrayRef,
        ),
        (
            "count",
            Arc::new(Int64Array::from(rows.count.clone())) as ArrayRef,
        ),
        (
            "plan",
            Arc::new(StringArray::from(rows.plan.clone())) as ArrayRef,
        ),
    ])
    .unwrap();
    let file = std::fs::File::create(directory.join("train.parquet")).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();

    let spec = spec();
    let mut builder = ReferenceBuilder::new(&spec, "3", "direct");
    for i in 0..rows.count.len() {
        builder.add_row();
        builder.add(
            "amount",
            rows.amount[i].map_or(TrainingValue::Missing, TrainingValue::Number),
        );
        builder.add("count", TrainingValue::Number(rows.count[i] as f64));
        // An empty CSV cell and a JSON null are both missing.
        builder.add(
            "plan",
            rows.plan[i].map_or(TrainingValue::Missing, TrainingValue::Text),
        );
    }
    let mut expected = builder.build().unwrap();

    for name in ["train.csv", "train.jsonl", "train.parquet"] {
        let built = build_reference(&spec, "3", &directory.join(name)).unwrap();
        expected.source = format!("file:{name}");
        assert_eq!(built.profile, expected, "{name}");
        if name == "train.csv" {
            assert_eq!(built.ignored_columns, vec!["ignored_column".to_owned()]);
        }
    }
    let unsupported = build_reference(&spec, "3", &directory.join("train.xlsx")).unwrap_err();
    assert!(unsupported.to_string().contains("unsupported file type"));
    let _ = std::fs::remove_dir_all(&directory);
}
