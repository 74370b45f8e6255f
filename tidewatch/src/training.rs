//! Reading training data (CSV, Parquet, JSON lines) with `arrow` into a
//! reference profile.
//!
//! Columns are matched to the model's series by name: feature names as
//! configured, plus `prediction.score`, `prediction.class`, `latency_ms` and
//! `actual.label` for the derived series. Other columns are ignored (and
//! listed in the result). Numeric columns of any width are read as `f64`;
//! strings and booleans as text; nulls and empty CSV cells as missing.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type};
use detectors::reference::{ReferenceBuilder, ReferenceProfile, TrainingValue};
use detectors::spec::ModelSpec;

/// Why training data could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TrainingError {
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Arrow could not parse the file.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: String,
        /// Arrow's or Parquet's message.
        message: String,
    },
    /// The extension is not one of csv, parquet, jsonl/json/ndjson.
    #[error(
        "{0}: unsupported file type (expected .csv, .parquet, .arrow, .jsonl, .ndjson or .json)"
    )]
    UnsupportedType(String),
    /// The profile could not be built.
    #[error(transparent)]
    Reference(#[from] detectors::Error),
}

/// A built profile and the columns that matched no series.
#[derive(Debug)]
pub struct TrainingProfile {
    /// The profile.
    pub profile: ReferenceProfile,
    /// Columns not used.
    pub ignored_columns: Vec<String>,
}

/// Reads `path` and builds the reference profile of `spec` at `model_version`.
pub fn build_reference(
    spec: &ModelSpec,
    model_version: &str,
    path: &Path,
) -> Result<TrainingProfile, TrainingError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut builder = ReferenceBuilder::new(spec, model_version, &format!("file:{name}"));
    let mut ignored = std::collections::BTreeSet::new();
    for_each_batch(path, |batch| {
        for _ in 0..batch.num_rows() {
            builder.add_row();
        }
        for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
            if !spec.reads_training_column(field.name()) {
                ignored.insert(field.name().clone());
                continue;
            }
            add_column(&mut builder, field.name(), column.as_ref());
        }
    })?;
    let profile = builder.build()?;
    Ok(TrainingProfile {
        profile,
        ignored_columns: ignored.into_iter().collect(),
    })
}

/// Reads a CSV (with header), JSON-lines, Parquet or Arrow IPC file (by
/// extension) and hands every record batch to `consume`. Schemas of CSV and
/// JSON are inferred from the first 10,000 rows.
pub fn for_each_batch(
    path: &Path,
    mut consume: impl FnMut(RecordBatch),
) -> Result<(), TrainingError> {
    let (_, batches) = batches(path, None)?;
    for batch in batches {
        consume(batch?);
    }
    Ok(())
}

/// Rows per record batch read.
const BATCH_ROWS: usize = 65_536;

/// Record batches of a file, one at a time.
pub type Batches = Box<dyn Iterator<Item = Result<RecordBatch, TrainingError>> + Send>;

/// How a file's format lays out its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Column by column (Parquet, Arrow IPC): reading one column reads
    /// only that column's bytes.
    Columnar,
    /// Row by row (CSV, JSON lines): any column costs parsing every row.
    Rows,
}

/// The layout of `path`'s format, by extension.
pub fn layout(path: &Path) -> Result<Layout, TrainingError> {
    match extension(path).as_str() {
        "parquet" | "arrow" | "ipc" | "feather" => Ok(Layout::Columnar),
        "csv" | "jsonl" | "ndjson" | "json" => Ok(Layout::Rows),
        _ => Err(TrainingError::UnsupportedType(path.display().to_string())),
    }
}

fn extension(path: &Path) -> String {
    path.extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// The file's schema and its record batches (of at most 65,536 rows), read
/// lazily: one batch is decoded at a time. With `columns`, only those
/// columns (the ones the file has, in file order) are decoded; Parquet and
/// Arrow IPC then read nothing of the others.
pub fn batches(
    path: &Path,
    columns: Option<&[String]>,
) -> Result<(arrow::datatypes::SchemaRef, Batches), TrainingError> {
    let display = path.display().to_string();
    let format_error = |message: String| TrainingError::Format {
        path: display.clone(),
        message,
    };
    let open = || {
        File::open(path).map_err(|source| TrainingError::Io {
            path: display.clone(),
            source,
        })
    };
    // Positions of the wanted columns in `schema`, in file order.
    let projection = |schema: &arrow::datatypes::Schema| -> Option<Vec<usize>> {
        columns.map(|wanted| {
            (0..schema.fields().len())
                .filter(|i| wanted.contains(schema.field(*i).name()))
                .collect()
        })
    };
    let errors = {
        let display = display.clone();
        move |error: arrow::error::ArrowError| TrainingError::Format {
            path: display.clone(),
            message: error.to_string(),
        }
    };
    match extension(path).as_str() {
        "csv" => {
            let format = arrow::csv::reader::Format::default().with_header(true);
            let (schema, _) = format
                .infer_schema(open()?, Some(10_000))
                .map_err(|e| format_error(e.to_string()))?;
            let schema = Arc::new(schema);
            let mut builder = arrow::csv::ReaderBuilder::new(schema.clone())
                .with_format(format)
                .with_batch_size(BATCH_ROWS);
            let mut projected = schema.clone();
            if let Some(indices) = projection(&schema) {
                projected = Arc::new(
                    schema
                        .project(&indices)
                        .map_err(|e| format_error(e.to_string()))?,
                );
                builder = builder.with_projection(indices);
            }
            let reader = builder
                .build(open()?)
                .map_err(|e| format_error(e.to_string()))?;
            Ok((projected, Box::new(reader.map(move |b| b.map_err(&errors)))))
        }
        "jsonl" | "ndjson" | "json" => {
            let mut reader = std::io::BufReader::new(open()?);
            let (schema, _) =
                arrow::json::reader::infer_json_schema_from_seekable(&mut reader, Some(10_000))
                    .map_err(|e| format_error(e.to_string()))?;
            // Fields outside the schema are skipped by the decoder.
            let schema = match projection(&schema) {
                Some(indices) => schema
                    .project(&indices)
                    .map_err(|e| format_error(e.to_string()))?,
                None => schema,
            };
            let schema = Arc::new(schema);
            let reader = arrow::json::ReaderBuilder::new(schema.clone())
                .with_batch_size(BATCH_ROWS)
                .build(std::io::BufReader::new(open()?))
                .map_err(|e| format_error(e.to_string()))?;
            Ok((schema, Box::new(reader.map(move |b| b.map_err(&errors)))))
        }
        "parquet" => {
            let mut builder =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(open()?)
                    .map_err(|e| format_error(e.to_string()))?
                    .with_batch_size(BATCH_ROWS);
            if let Some(indices) = projection(builder.schema()) {
                let mask = parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), indices);
                builder = builder.with_projection(mask);
            }
            let reader = builder.build().map_err(|e| format_error(e.to_string()))?;
            Ok((
                arrow::array::RecordBatchReader::schema(&reader),
                Box::new(reader.map(move |b| b.map_err(&errors))),
            ))
        }
        "arrow" | "ipc" | "feather" => {
            let schema = arrow::ipc::reader::FileReader::try_new(open()?, None)
                .map_err(|e| format_error(e.to_string()))?
                .schema();
            let reader = arrow::ipc::reader::FileReader::try_new(open()?, projection(&schema))
                .map_err(|e| format_error(e.to_string()))?;
            Ok((
                reader.schema(),
                Box::new(reader.map(move |b| b.map_err(&errors))),
            ))
        }
        _ => Err(TrainingError::UnsupportedType(display)),
    }
}

fn add_column(builder: &mut ReferenceBuilder, name: &str, column: &dyn Array) {
    match column.data_type() {
        DataType::Utf8
        | DataType::LargeUtf8
        | DataType::Utf8View
        | DataType::Boolean
        | DataType::Dictionary(_, _) => {
            let Ok(text) = arrow::compute::cast(column, &DataType::Utf8) else {
                return;
            };
            let text = text.as_string::<i32>();
            for value in text.iter() {
                builder.add(
                    name,
                    value.map_or(TrainingValue::Missing, TrainingValue::Text),
                );
            }
        }
        data_type if data_type.is_numeric() => {
            let Ok(numbers) = arrow::compute::cast(column, &DataType::Float64) else {
                return;
            };
            for value in numbers.as_primitive::<Float64Type>().iter() {
                builder.add(
                    name,
                    value.map_or(TrainingValue::Missing, TrainingValue::Number),
                );
            }
        }
        _ => {
            for _ in 0..column.len() {
                builder.add(name, TrainingValue::Missing);
            }
        }
    }
}
