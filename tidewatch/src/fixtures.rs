//! The seeded generator of the demo's fixture stream and training data.
//!
//! Scenario: a binary churn classifier serving four countries, one day of
//! traffic in hourly windows. From hour [`DemoShape::drift_onset_hour`] on,
//! two numeric features (`monthly_charges`, `support_calls`) shift and a
//! categorical one (`payment_method`) gains a category never seen in
//! training (`crypto`); `age`, `tenure_months` and `contract` stay as they
//! were; the label's relation to the inputs does not change (each row's
//! score is its true churn probability throughout), so the model's
//! performance changes only because its inputs moved, which performance
//! estimation can see before the labels. Actuals (the true churn label) arrive 10 minutes to 2 hours after
//! their prediction for 60 % of predictions. About 1 % of `monthly_charges`
//! values are null throughout.
//!
//! Everything derives from a ChaCha8 generator seeded by the caller, so the
//! same seed gives byte-identical files on every machine.

use std::fmt::Write as _;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp, LogNormal, Normal, Poisson};

/// Model name used by the demo.
pub const DEMO_MODEL: &str = "churn";
/// Model version used by the demo.
pub const DEMO_VERSION: &str = "7";
/// 2026-01-05T00:00:00Z, the start of the demo day.
pub const DEMO_START_MS: i64 = 1_767_571_200_000;

/// How much to generate.
#[derive(Debug, Clone, Copy)]
pub struct DemoShape {
    /// Hours of traffic.
    pub hours: u32,
    /// Predictions per hour.
    pub predictions_per_hour: u32,
    /// First hour with drifted inputs.
    pub drift_onset_hour: u32,
    /// First hour back to the training distribution (`None`: drift lasts).
    pub drift_end_hour: Option<u32>,
    /// Training rows.
    pub training_rows: u32,
}

impl DemoShape {
    /// The full demo: 24 h × 10,000 predictions, drift from hour 14.
    pub fn full() -> Self {
        Self {
            hours: 24,
            predictions_per_hour: 10_000,
            drift_onset_hour: 14,
            drift_end_hour: None,
            training_rows: 50_000,
        }
    }

    /// A small sample, committed in `fixtures/` and checked for reproducibility.
    pub fn sample() -> Self {
        Self {
            hours: 3,
            predictions_per_hour: 200,
            drift_onset_hour: 2,
            drift_end_hour: None,
            training_rows: 300,
        }
    }
}

/// The generated files' contents.
#[derive(Debug)]
pub struct DemoFixtures {
    /// Predictions and actuals, JSON lines ordered by event time.
    pub stream: String,
    /// Training data, CSV with a header.
    pub training_csv: String,
    /// Number of prediction events.
    pub predictions: u64,
    /// Number of actual events.
    pub actuals: u64,
}

struct Row {
    age: f64,
    tenure_months: f64,
    monthly_charges: Option<f64>,
    support_calls: f64,
    contract: &'static str,
    payment_method: &'static str,
    score: f64,
}

struct Sampler {
    age: Normal<f64>,
    tenure: Exp<f64>,
    charges_before: Normal<f64>,
    charges_after: Normal<f64>,
    calls_before: Poisson<f64>,
    calls_after: Poisson<f64>,
    latency: LogNormal<f64>,
}

impl Sampler {
    fn new() -> Self {
        Self {
            age: Normal::new(42.0, 12.0).expect("valid"),
            tenure: Exp::new(1.0 / 24.0).expect("valid"),
            charges_before: Normal::new(70.0, 20.0).expect("valid"),
            charges_after: Normal::new(88.0, 22.0).expect("valid"),
            calls_before: Poisson::new(1.2).expect("valid"),
            calls_after: Poisson::new(2.6).expect("valid"),
            latency: LogNormal::new(2.5, 0.4).expect("valid"),
        }
    }

    fn row(&self, rng: &mut ChaCha8Rng, drifted: bool) -> Row {
        let age = self.age.sample(rng).clamp(18.0, 90.0).round();
        let tenure_months = self.tenure.sample(rng).min(120.0).round();
        let charges = if drifted {
            self.charges_after.sample(rng)
        } else {
            self.charges_before.sample(rng)
        };
        let monthly_charges =
            (rng.random::<f64>() >= 0.01).then(|| (charges.max(5.0) * 100.0).round() / 100.0);
        let support_calls = if drifted {
            self.calls_after.sample(rng)
        } else {
            self.calls_before.sample(rng)
        };
        let contract = pick(
            rng,
            &[
                ("month-to-month", 0.55),
                ("one-year", 0.25),
                ("two-year", 0.20),
            ],
        );
        let payment_method = if drifted {
            pick(
                rng,
                &[
                    ("card", 0.30),
                    ("bank_transfer", 0.20),
                    ("paypal", 0.20),
                    ("crypto", 0.30),
                ],
            )
        } else {
            pick(
                rng,
                &[("card", 0.45), ("bank_transfer", 0.30), ("paypal", 0.25)],
            )
        };
        let contract_effect = match contract {
            "month-to-month" => 0.8,
            "one-year" => -0.3,
            _ => -1.0,
        };
        let logit =
            -1.6 + 0.03 * (monthly_charges.unwrap_or(70.0) - 70.0) + 0.5 * (support_calls - 1.2)
                - 0.03 * (tenure_months - 24.0)
                + contract_effect;
        let score = 1.0 / (1.0 + (-logit).exp());
        Row {
            age,
            tenure_months,
            monthly_charges,
            support_calls,
            contract,
            payment_method,
            score,
        }
    }
}

fn pick(rng: &mut ChaCha8Rng, choices: &[(&'static str, f64)]) -> &'static str {
    let mut draw = rng.random::<f64>();
    for (value, weight) in choices {
        if draw < *weight {
            return value;
        }
        draw -= weight;
    }
    choices[choices.len() - 1].0
}

const COUNTRIES: [(&str, f64); 4] = [("DE", 0.30), ("FR", 0.20), ("US", 0.35), ("GB", 0.15)];

/// `count` prediction events of the demo model spread evenly over `hours`
/// hours from [`DEMO_START_MS`], in time order, with no actuals and nothing
/// malformed: the input of throughput benchmarks. Inputs drift in the
/// second half as in the demo; the score and the latency are written at
/// full precision, as a producer serializing `f64`s does. Yields
/// (prediction id, JSON line), lazily.
pub fn prediction_stream(
    count: u64,
    hours: u32,
    seed: u64,
) -> impl Iterator<Item = (String, String)> {
    let sampler = Sampler::new();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let span_ms = i64::from(hours.max(1)) * 3_600_000;
    (0..count).map(move |index| {
        let drifted = index >= count / 2;
        let row = sampler.row(&mut rng, drifted);
        let country = pick(&mut rng, &COUNTRIES);
        let latency = sampler.latency.sample(&mut rng);
        let timestamp = DEMO_START_MS + (i128::from(index) * i128::from(span_ms) / i128::from(count.max(1))) as i64;
        let id = format!("b{index:08}");
        let class = if row.score >= 0.5 { "yes" } else { "no" };
        let charges = row
            .monthly_charges
            .map_or("null".to_owned(), |v| v.to_string());
        let line = format!(
            r#"{{"schema":"tidewatch.prediction.v1","model":"{DEMO_MODEL}","model_version":"{DEMO_VERSION}","prediction_id":"{id}","timestamp":{timestamp},"features":{{"age":{},"tenure_months":{},"monthly_charges":{charges},"support_calls":{},"contract":"{}","payment_method":"{}"}},"prediction":{{"score":{},"class":"{class}"}},"latency_ms":{latency},"segments":{{"country":"{country}"}}}}"#,
            row.age, row.tenure_months, row.support_calls, row.contract, row.payment_method, row.score
        );
        (id, line)
    })
}

/// Generates the stream and the training data.
pub fn generate(shape: DemoShape, seed: u64) -> DemoFixtures {
    let sampler = Sampler::new();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut lines: Vec<(i64, u64, String)> = Vec::new();
    let mut predictions = 0u64;
    let mut actuals = 0u64;
    let hour_ms = 3_600_000i64;
    for hour in 0..shape.hours {
        let drifted =
            hour >= shape.drift_onset_hour && shape.drift_end_hour.is_none_or(|end| hour < end);
        for index in 0..shape.predictions_per_hour {
            let timestamp = DEMO_START_MS
                + i64::from(hour) * hour_ms
                + i64::from(index) * hour_ms / i64::from(shape.predictions_per_hour)
                + rng.random_range(0..hour_ms / i64::from(shape.predictions_per_hour));
            let row = sampler.row(&mut rng, drifted);
            let country = pick(&mut rng, &COUNTRIES);
            let latency = sampler.latency.sample(&mut rng);
            let id = format!("p{hour:02}-{index:05}");
            let class = if row.score >= 0.5 { "yes" } else { "no" };
            let charges = row
                .monthly_charges
                .map_or("null".to_owned(), |v| format!("{v:.2}"));
            let mut line = String::with_capacity(320);
            let _ = write!(
                line,
                r#"{{"schema":"tidewatch.prediction.v1","model":"{DEMO_MODEL}","model_version":"{DEMO_VERSION}","prediction_id":"{id}","timestamp":{timestamp},"features":{{"age":{},"tenure_months":{},"monthly_charges":{charges},"support_calls":{},"contract":"{}","payment_method":"{}"}},"prediction":{{"score":{:.4},"class":"{class}"}},"latency_ms":{latency:.2},"segments":{{"country":"{country}"}}}}"#,
                row.age,
                row.tenure_months,
                row.support_calls,
                row.contract,
                row.payment_method,
                row.score
            );
            lines.push((timestamp, lines.len() as u64, line));
            predictions += 1;
            if rng.random::<f64>() < 0.6 {
                // The score is the true churn probability before and after
                // the onset: the inputs shift, their relation to the label
                // does not (covariate shift only).
                let label = if rng.random::<f64>() < row.score {
                    "yes"
                } else {
                    "no"
                };
                let delay = rng.random_range(600_000..7_200_000);
                let label_time = timestamp + delay;
                let actual = format!(
                    r#"{{"schema":"tidewatch.actual.v1","model":"{DEMO_MODEL}","model_version":"{DEMO_VERSION}","prediction_id":"{id}","timestamp":{label_time},"label":"{label}","segments":{{"country":"{country}"}}}}"#
                );
                lines.push((label_time, lines.len() as u64, actual));
                actuals += 1;
            }
        }
    }
    lines.sort_by_key(|(timestamp, order, _)| (*timestamp, *order));
    // A few malformed payloads, as real producers emit now and then: the
    // pipeline must dead-letter them with a reason and carry on.
    let malformed = [
        r#"{"schema":"tidewatch.prediction.v1","model":"churn","model_version":"7","prediction_id":"bad-1","timestamp":"yesterday","features":{"age":30},"prediction":{"score":0.1}}"#,
        r#"{"schema":"tidewatch.prediction.v1","model":"churn","model_version":"7","prediction_id":"bad-2","timestamp":1767571200000,"features":{"age":30}"#,
        r#"{"schema":"tidewatch.prediction.v1","model":"churn","model_version":"7","timestamp":1767571200000,"features":{"age":[30]},"prediction":{"score":0.1}}"#,
    ];
    for (position, line) in malformed.iter().enumerate() {
        let at = lines.len() * (position + 1) / (malformed.len() + 1);
        let timestamp = lines[at].0;
        lines.insert(at, (timestamp, u64::MAX, (*line).to_owned()));
    }
    let mut stream = String::with_capacity(lines.iter().map(|l| l.2.len() + 1).sum());
    for (_, _, line) in lines {
        stream.push_str(&line);
        stream.push('\n');
    }

    let mut training_csv = String::from(
        "age,tenure_months,monthly_charges,support_calls,contract,payment_method,prediction.score,prediction.class,actual.label\n",
    );
    for _ in 0..shape.training_rows {
        let row = sampler.row(&mut rng, false);
        let class = if row.score >= 0.5 { "yes" } else { "no" };
        let label = if rng.random::<f64>() < row.score {
            "yes"
        } else {
            "no"
        };
        let charges = row
            .monthly_charges
            .map_or(String::new(), |v| format!("{v:.2}"));
        let _ = writeln!(
            training_csv,
            "{},{},{charges},{},{},{},{:.4},{class},{label}",
            row.age,
            row.tenure_months,
            row.support_calls,
            row.contract,
            row.payment_method,
            row.score
        );
    }
    DemoFixtures {
        stream,
        training_csv,
        predictions,
        actuals,
    }
}

/// Writes `reference.parquet` and `current.parquet` (and with `csv` the
/// same data as `reference.csv` and `current.csv`) with `rows` rows of
/// `columns` numeric columns (`f00`, `f01`…) for the analyze benchmark:
/// full-precision doubles, as models' inputs are. Column `i` follows a
/// different family (normal, log-normal, uniform, exponential, by `i % 4`);
/// in the current file the first five columns are shifted by a quarter of
/// their family's scale parameter. Parquet as pandas and pyarrow write it by
/// default: Snappy-compressed, dictionary encoding tried, row groups of
/// 1,048,576 rows.
pub fn write_analyze_data(
    directory: &std::path::Path,
    rows: usize,
    columns: usize,
    seed: u64,
    csv: bool,
) -> std::io::Result<()> {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Float64Array, RecordBatch};
    use parquet::basic::Compression;
    use parquet::file::properties::WriterProperties;

    std::fs::create_dir_all(directory)?;
    for (name, shifted) in [("reference", false), ("current", true)] {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ u64::from(shifted));
        let arrays: Vec<(String, ArrayRef)> = (0..columns)
            .map(|column| {
                let shift = if shifted && column < 5 { 0.25 } else { 0.0 };
                let values: Vec<f64> = (0..rows)
                    .map(|_| match column % 4 {
                        0 => Normal::new(10.0 + 2.0 * shift, 2.0)
                            .expect("valid")
                            .sample(&mut rng),
                        1 => LogNormal::new(shift, 1.0).expect("valid").sample(&mut rng),
                        2 => rng.random_range(shift..1.0 + shift),
                        _ => Exp::new(1.0).expect("valid").sample(&mut rng) + shift,
                    })
                    .collect();
                (
                    format!("f{column:02}"),
                    Arc::new(Float64Array::from(values)) as ArrayRef,
                )
            })
            .collect();
        let batch = RecordBatch::try_from_iter(arrays).map_err(std::io::Error::other)?;
        let output = std::fs::File::create(directory.join(format!("{name}.parquet")))?;
        let properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let mut writer =
            parquet::arrow::ArrowWriter::try_new(output, batch.schema(), Some(properties))
                .map_err(std::io::Error::other)?;
        writer.write(&batch).map_err(std::io::Error::other)?;
        writer.close().map_err(std::io::Error::other)?;
        if csv {
            let output = std::fs::File::create(directory.join(format!("{name}.csv")))?;
            let mut writer = arrow::csv::Writer::new(std::io::BufWriter::new(output));
            writer.write(&batch).map_err(std::io::Error::other)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn committed_samples_are_reproduced_by_the_generator() {
        let generated = generate(DemoShape::sample(), 42);
        assert_eq!(
            generated.stream,
            fixture("demo-sample.jsonl"),
            "run `tidewatch fixtures sample` to regenerate"
        );
        assert_eq!(generated.training_csv, fixture("demo-sample-train.csv"));
    }

    #[test]
    fn the_stream_is_time_ordered_and_decodes() {
        let generated = generate(DemoShape::sample(), 7);
        let mut previous = i64::MIN;
        let mut malformed = 0;
        for line in generated.stream.lines() {
            match events::decode(line.as_bytes(), events::EventKind::Prediction) {
                Ok(event) => {
                    assert!(event.timestamp_ms >= previous);
                    previous = event.timestamp_ms;
                }
                Err(_) => malformed += 1,
            }
        }
        assert_eq!(malformed, 3);
        assert_eq!(generated.predictions, 600);
        assert!(generated.actuals > 300 && generated.actuals < 420);
    }
}
