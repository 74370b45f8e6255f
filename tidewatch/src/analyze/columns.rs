//! Drift per column, streamed from the files.
//!
//! Two passes, each over one file, with one batch (at most 65,536 rows) of
//! it decoded at a time:
//!
//! 1. **Reference.** Each compared column is accumulated into what its
//!    reference needs — a numeric column's values (8 bytes a row, one more
//!    while it has nulls: the exact percentiles need them all), a
//!    categorical column's bounded counts — and its reference is built.
//! 2. **Current.** Each batch goes straight into the column's per-chunk
//!    sketches over the reference bins; the current file is never held.
//!
//! Columnar files (Parquet, Arrow IPC) are read column by column, each
//! column by one worker of a pool of one thread per core, so decoding is
//! parallel too and at most one reference column per core is in memory.
//! Row files (CSV, JSON lines) must be parsed whole for any column: they are
//! read once per pass on a thread of their own, handing batches over a
//! queue of two to the workers, which split each batch's columns among
//! them; their reference pass holds every numeric reference column.

use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow::array::{Array, AsArray, Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Float64Type};
use detectors::categorical::{format_category, CategoricalSketch};
use detectors::metrics::{compute, DriftThresholds, FeatureWindowMetrics};
use detectors::numeric::{BinEdges, NumericSketch};
use detectors::reference::{CategoricalReference, FeatureReference, NumericReference};
use detectors::spec::FeatureKind;
use detectors::FeatureSketch;

use super::{AnalyzeError, Bands, ANALYZE_MAX_CATEGORIES, BAND_METRICS};
use crate::training::{batches, layout, Layout, TrainingError};

/// In [`RowChunks::Assigned`]: the row belongs to no chunk.
pub(super) const NO_CHUNK: u32 = u32::MAX;

/// How the current file's rows map to chunks.
pub(super) enum RowChunks {
    /// Every row in chunk 0.
    Whole,
    /// Row `r` in chunk `r / size`.
    Rows(usize),
    /// Per row, its chunk ([`NO_CHUNK`]: none, e.g. no timestamp).
    Assigned(Vec<u32>),
}

impl RowChunks {
    /// Calls `f(chunk, span)` for each run of rows of one chunk among the
    /// `len` rows from file row `first` on (`span` relative to `first`).
    fn spans(&self, first: usize, len: usize, mut f: impl FnMut(usize, Range<usize>)) {
        match self {
            RowChunks::Whole => {
                if len > 0 {
                    f(0, 0..len);
                }
            }
            RowChunks::Rows(size) => {
                let size = (*size).max(1);
                let mut at = 0;
                while at < len {
                    let chunk = (first + at) / size;
                    let end = ((chunk + 1) * size - first).min(len);
                    f(chunk, at..end);
                    at = end;
                }
            }
            RowChunks::Assigned(chunks) => {
                let of = |at: usize| chunks.get(first + at).copied().unwrap_or(NO_CHUNK);
                let mut at = 0;
                while at < len {
                    let chunk = of(at);
                    let mut end = at + 1;
                    while end < len && of(end) == chunk {
                        end += 1;
                    }
                    if chunk != NO_CHUNK {
                        f(chunk as usize, at..end);
                    }
                    at = end;
                }
            }
        }
    }
}

/// One batch's values of a column in the representation of the kind it is
/// compared as (null: missing).
enum Values {
    Numbers(Float64Array),
    Texts(StringArray),
}

/// Text of any array: timestamps as epoch integers, others by arrow's cast.
fn as_text(array: &dyn Array) -> Option<StringArray> {
    let text = match array.data_type() {
        DataType::Timestamp(_, _) => arrow::compute::cast(array, &DataType::Int64)
            .and_then(|ints| arrow::compute::cast(&ints, &DataType::Utf8)),
        _ => arrow::compute::cast(array, &DataType::Utf8),
    };
    text.ok().map(|text| text.as_string::<i32>().clone())
}

/// `array` in the representation of `kind`: numbers of numeric arrays,
/// numbers parsed from text (trimmed; unparsable: missing), text of
/// non-numeric arrays, integers without a fraction for numbers compared as
/// categories. A value arrow cannot convert is missing.
fn values(array: &dyn Array, kind: FeatureKind) -> Values {
    let numeric_array = array.data_type().is_numeric();
    let numbers = || {
        arrow::compute::cast(array, &DataType::Float64)
            .ok()
            .map(|numbers| numbers.as_primitive::<Float64Type>().clone())
    };
    match kind {
        FeatureKind::Numeric if numeric_array => {
            Values::Numbers(numbers().unwrap_or_else(|| Float64Array::new_null(array.len())))
        }
        FeatureKind::Numeric => Values::Numbers(match as_text(array) {
            Some(text) => text
                .iter()
                .map(|v| v.and_then(|t| t.trim().parse().ok()))
                .collect(),
            None => Float64Array::new_null(array.len()),
        }),
        _ if numeric_array => Values::Texts(match numbers() {
            Some(numbers) => numbers.iter().map(|v| v.map(format_category)).collect(),
            None => StringArray::new_null(array.len()),
        }),
        _ => Values::Texts(as_text(array).unwrap_or_else(|| StringArray::new_null(array.len()))),
    }
}

/// The reference of one column, with the kind it is compared as.
pub(super) enum ColumnReference {
    Numeric(Box<(NumericReference, BinEdges)>),
    Categorical(CategoricalReference),
}

impl ColumnReference {
    fn empty_sketch(&self) -> FeatureSketch {
        match self {
            ColumnReference::Numeric(numeric) => {
                FeatureSketch::Numeric(NumericSketch::new(Some(&numeric.1)))
            }
            ColumnReference::Categorical(_) => {
                FeatureSketch::Categorical(CategoricalSketch::new(ANALYZE_MAX_CATEGORIES))
            }
        }
    }

    fn profile(&self) -> FeatureReference {
        match self {
            ColumnReference::Numeric(numeric) => FeatureReference::Numeric(numeric.0.clone()),
            ColumnReference::Categorical(profile) => FeatureReference::Categorical(profile.clone()),
        }
    }

    /// Adds rows `span` of `values` to `sketch` (one of this reference's).
    fn add(&self, sketch: &mut FeatureSketch, values: &Values, span: Range<usize>) {
        match (self, sketch, values) {
            (
                ColumnReference::Numeric(numeric),
                FeatureSketch::Numeric(sketch),
                Values::Numbers(numbers),
            ) => add_numbers(sketch, Some(&numeric.1), numbers, span),
            (_, FeatureSketch::Categorical(sketch), Values::Texts(texts)) => {
                add_texts(sketch, texts, span)
            }
            _ => unreachable!("values are converted to the reference's kind"),
        }
    }
}

fn add_numbers(
    sketch: &mut NumericSketch,
    edges: Option<&BinEdges>,
    numbers: &Float64Array,
    span: Range<usize>,
) {
    if numbers.null_count() == 0 {
        for value in &numbers.values()[span] {
            sketch.add(*value, edges);
        }
    } else {
        for row in span {
            if numbers.is_null(row) {
                sketch.add_missing();
            } else {
                sketch.add(numbers.value(row), edges);
            }
        }
    }
}

fn add_texts(sketch: &mut CategoricalSketch, texts: &StringArray, span: Range<usize>) {
    for row in span {
        if texts.is_null(row) {
            sketch.add_missing();
        } else {
            sketch.add(texts.value(row));
        }
    }
}

/// What a column's reference is built from, accumulated batch by batch.
enum ReferenceValues {
    /// Every value in row order; `present` once a null was seen (the value
    /// at a null row is a placeholder).
    Numeric {
        values: Vec<f64>,
        present: Option<Vec<bool>>,
    },
    /// The counts, and those of each reference chunk of `band_rows` rows
    /// when bands are asked for (`band_rows` > 0).
    Categorical {
        sketch: CategoricalSketch,
        chunks: Vec<CategoricalSketch>,
        band_rows: usize,
        rows: usize,
    },
}

impl ReferenceValues {
    fn new(kind: FeatureKind, band_rows: usize) -> Self {
        match kind {
            FeatureKind::Numeric => ReferenceValues::Numeric {
                values: Vec::new(),
                present: None,
            },
            _ => ReferenceValues::Categorical {
                sketch: CategoricalSketch::new(ANALYZE_MAX_CATEGORIES),
                chunks: Vec::new(),
                band_rows,
                rows: 0,
            },
        }
    }

    fn kind(&self) -> FeatureKind {
        match self {
            ReferenceValues::Numeric { .. } => FeatureKind::Numeric,
            ReferenceValues::Categorical { .. } => FeatureKind::Categorical,
        }
    }

    fn push(&mut self, array: &dyn Array) {
        match (self.kind(), self) {
            (kind, ReferenceValues::Numeric { values, present }) => {
                let Values::Numbers(numbers) = self::values(array, kind) else {
                    unreachable!("numeric kind");
                };
                if numbers.null_count() == 0 {
                    values.extend_from_slice(numbers.values());
                    if let Some(present) = present {
                        present.resize(values.len(), true);
                    }
                } else {
                    let present = present.get_or_insert_with(|| vec![true; values.len()]);
                    values.extend_from_slice(numbers.values());
                    present.extend((0..numbers.len()).map(|row| numbers.is_valid(row)));
                }
            }
            (
                kind,
                ReferenceValues::Categorical {
                    sketch,
                    chunks,
                    band_rows,
                    rows,
                },
            ) => {
                let Values::Texts(texts) = self::values(array, kind) else {
                    unreachable!("categorical kind");
                };
                add_texts(sketch, &texts, 0..texts.len());
                if *band_rows > 0 {
                    RowChunks::Rows(*band_rows).spans(*rows, texts.len(), |chunk, span| {
                        if chunks.len() <= chunk {
                            chunks.resize_with(chunk + 1, || {
                                CategoricalSketch::new(ANALYZE_MAX_CATEGORIES)
                            });
                        }
                        add_texts(&mut chunks[chunk], &texts, span);
                    });
                }
                *rows += texts.len();
            }
        }
    }

    /// The column's reference and, with `band_rows` > 0, the band of each
    /// band metric over the reference's chunks of that many rows (none when
    /// fewer than three chunks fit).
    fn build(
        self,
        name: &str,
        band_rows: usize,
        thresholds: DriftThresholds,
    ) -> Result<(ColumnReference, Option<Bands>), AnalyzeError> {
        let empty = || AnalyzeError::EmptyReference(name.to_owned());
        match self {
            ReferenceValues::Numeric {
                mut values,
                present,
            } => {
                let rows = values.len();
                let with_bands = band_rows > 0 && rows / band_rows >= 3;
                let (chosen, missing) = match &present {
                    // Without bands the values are not needed afterwards.
                    None if !with_bands => (std::mem::take(&mut values), 0),
                    None => (values.clone(), 0),
                    Some(present) => (
                        values
                            .iter()
                            .zip(present)
                            .filter(|(_, present)| **present)
                            .map(|(value, _)| *value)
                            .collect::<Vec<f64>>(),
                        present.iter().filter(|present| !**present).count() as u64,
                    ),
                };
                let reference =
                    NumericReference::from_values(chosen, missing).map_err(|_| empty())?;
                let edges = BinEdges::new(reference.edges.clone()).map_err(|_| empty())?;
                let reference = ColumnReference::Numeric(Box::new((reference, edges)));
                let bands = with_bands.then(|| {
                    let chunks: Vec<FeatureWindowMetrics> = (0..rows / band_rows)
                        .map(|chunk| {
                            let span = chunk * band_rows..(chunk + 1) * band_rows;
                            let mut sketch = reference.empty_sketch();
                            let FeatureSketch::Numeric(numeric) = &mut sketch else {
                                unreachable!("numeric reference");
                            };
                            let ColumnReference::Numeric(profile) = &reference else {
                                unreachable!("numeric reference");
                            };
                            for row in span {
                                if present.as_ref().is_none_or(|present| present[row]) {
                                    numeric.add(values[row], Some(&profile.1));
                                } else {
                                    numeric.add_missing();
                                }
                            }
                            compute(&sketch, Some(&reference.profile()), thresholds)
                        })
                        .collect();
                    bands_of(&chunks)
                });
                Ok((reference, bands))
            }
            ReferenceValues::Categorical {
                sketch,
                chunks,
                band_rows,
                rows,
            } => {
                if sketch.total() == 0 {
                    return Err(empty());
                }
                let reference = ColumnReference::Categorical(CategoricalReference {
                    counts: sketch.counts().clone(),
                    other: sketch.other(),
                    missing: sketch.missing(),
                });
                let bands = (band_rows > 0 && rows / band_rows >= 3).then(|| {
                    let profile = reference.profile();
                    let metrics: Vec<FeatureWindowMetrics> = chunks
                        .into_iter()
                        .take(rows / band_rows)
                        .map(|chunk| {
                            compute(
                                &FeatureSketch::Categorical(chunk),
                                Some(&profile),
                                thresholds,
                            )
                        })
                        .collect();
                    bands_of(&metrics)
                });
                Ok((reference, bands))
            }
        }
    }
}

/// (mean, std) of each band metric over reference chunks' metrics (a
/// metric is left out when fewer than three chunks have it).
fn bands_of(chunks: &[FeatureWindowMetrics]) -> Bands {
    let mut bands = Vec::new();
    for name in BAND_METRICS {
        let values: Vec<f64> = chunks
            .iter()
            .filter_map(|m| super::metric_value(m, name))
            .collect();
        if values.len() < 3 {
            continue;
        }
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        let variance =
            values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (values.len() - 1) as f64;
        bands.push((name, mean, variance.sqrt()));
    }
    bands
}

/// A column's per-chunk sketches of the current file.
struct CurrentChunks {
    reference: ColumnReference,
    kind: FeatureKind,
    sketches: Vec<FeatureSketch>,
    rows: usize,
}

impl CurrentChunks {
    fn new(reference: ColumnReference, kind: FeatureKind) -> Self {
        Self {
            reference,
            kind,
            sketches: Vec::new(),
            rows: 0,
        }
    }

    fn push(&mut self, array: &dyn Array, chunks: &RowChunks) {
        let values = values(array, self.kind);
        let (reference, sketches) = (&self.reference, &mut self.sketches);
        chunks.spans(self.rows, array.len(), |chunk, span| {
            if sketches.len() <= chunk {
                sketches.resize_with(chunk + 1, || reference.empty_sketch());
            }
            reference.add(&mut sketches[chunk], &values, span);
        });
        self.rows += array.len();
    }

    /// The metrics of chunks `0..chunk_count` (a chunk no row reached has
    /// an empty sketch).
    fn finish(
        mut self,
        chunk_count: usize,
        thresholds: DriftThresholds,
    ) -> Vec<FeatureWindowMetrics> {
        let reference = &self.reference;
        self.sketches
            .resize_with(chunk_count.max(self.sketches.len()), || {
                reference.empty_sketch()
            });
        let profile = reference.profile();
        self.sketches
            .iter()
            .take(chunk_count)
            .map(|sketch| compute(sketch, Some(&profile), thresholds))
            .collect()
    }
}

/// One compared column's drift over the chunks.
pub(super) struct ColumnDrift {
    /// Per chunk, the metrics (before the correction across columns and
    /// the bands).
    pub chunks: Vec<FeatureWindowMetrics>,
    /// The bands from the reference chunks, when asked for and possible.
    pub bands: Option<Bands>,
}

/// What the drift passes need to know.
pub(super) struct DriftPlan<'a> {
    pub reference: &'a Path,
    pub current: &'a Path,
    /// Compared columns with their kind.
    pub compared: &'a [(String, FeatureKind)],
    pub chunks: &'a RowChunks,
    /// Chunk count, when known before reading (otherwise from the rows:
    /// chunks of [`RowChunks::Rows`]).
    pub chunk_count: Option<usize>,
    /// Rows per reference chunk for bands (0: no bands).
    pub band_rows: usize,
    pub thresholds: DriftThresholds,
}

/// Every compared column's drift, and the current file's row count.
pub(super) fn drift(
    plan: &DriftPlan<'_>,
    mut progress: impl FnMut(usize, usize),
) -> Result<(Vec<ColumnDrift>, usize), AnalyzeError> {
    let names: Vec<String> = plan.compared.iter().map(|(name, _)| name.clone()).collect();
    let fresh = || -> Vec<ReferenceValues> {
        plan.compared
            .iter()
            .map(|(_, kind)| ReferenceValues::new(*kind, plan.band_rows))
            .collect()
    };
    let build = |(values, name): (ReferenceValues, &String)| {
        values.build(name, plan.band_rows, plan.thresholds)
    };
    let references: Vec<(ColumnReference, Option<Bands>)> = match layout(plan.reference)? {
        Layout::Columnar => {
            let indexed: Vec<usize> = (0..names.len()).collect();
            parallel_map(&indexed, |index| {
                let mut values = ReferenceValues::new(plan.compared[*index].1, plan.band_rows);
                let (_, batches) = batches(plan.reference, Some(&names[*index..=*index]))?;
                for batch in batches {
                    values.push(column(&batch?, &names[*index], plan.reference)?);
                }
                build((values, &names[*index]))
            })
            .into_iter()
            .collect::<Result<_, _>>()?
        }
        Layout::Rows => {
            let mut accumulated = fresh();
            read_rows(plan.reference, &names, |batch| {
                let arrays = columns(batch, &names, plan.reference)?;
                parallel_for_each(&mut accumulated, |index, values| {
                    values.push(arrays[index]);
                });
                Ok(())
            })?;
            let pairs: Vec<(ReferenceValues, &String)> =
                accumulated.into_iter().zip(&names).collect();
            parallel_map_owned(pairs, build)
                .into_iter()
                .collect::<Result<_, _>>()?
        }
    };
    progress(1, 2);
    let mut bands = Vec::with_capacity(references.len());
    let mut current: Vec<CurrentChunks> = Vec::with_capacity(references.len());
    for ((reference, column_bands), (_, kind)) in references.into_iter().zip(plan.compared) {
        bands.push(column_bands);
        current.push(CurrentChunks::new(reference, *kind));
    }
    let current: Vec<CurrentChunks> = match layout(plan.current)? {
        Layout::Columnar => parallel_map_owned(
            current.into_iter().zip(&names).collect(),
            |(mut chunks, name)| -> Result<CurrentChunks, AnalyzeError> {
                let (_, batches) = batches(plan.current, Some(std::slice::from_ref(name)))?;
                for batch in batches {
                    chunks.push(column(&batch?, name, plan.current)?, plan.chunks);
                }
                Ok(chunks)
            },
        )
        .into_iter()
        .collect::<Result<_, _>>()?,
        Layout::Rows => {
            let mut current = current;
            read_rows(plan.current, &names, |batch| {
                let arrays = columns(batch, &names, plan.current)?;
                parallel_for_each(&mut current, |index, chunks| {
                    chunks.push(arrays[index], plan.chunks);
                });
                Ok(())
            })?;
            current
        }
    };
    progress(2, 2);
    let rows = current.first().map_or(0, |chunks| chunks.rows);
    let chunk_count = plan.chunk_count.unwrap_or(match plan.chunks {
        RowChunks::Rows(size) => rows.div_ceil((*size).max(1)),
        _ => 1,
    });
    let drift = parallel_map_owned(
        current.into_iter().zip(bands).collect(),
        |(chunks, bands)| ColumnDrift {
            chunks: chunks.finish(chunk_count, plan.thresholds),
            bands,
        },
    );
    Ok((drift, rows))
}

/// The column `name` of a batch read with it.
fn column<'a>(
    batch: &'a RecordBatch,
    name: &str,
    path: &Path,
) -> Result<&'a dyn Array, AnalyzeError> {
    batch
        .column_by_name(name)
        .map(|array| array.as_ref())
        .ok_or_else(|| AnalyzeError::MissingColumn {
            column: name.to_owned(),
            file: path.display().to_string(),
        })
}

fn columns<'a>(
    batch: &'a RecordBatch,
    names: &[String],
    path: &Path,
) -> Result<Vec<&'a dyn Array>, AnalyzeError> {
    names.iter().map(|name| column(batch, name, path)).collect()
}

/// Batches decoded ahead: while the workers take one, the reader decodes
/// the next (it waits when two are ready).
const READ_AHEAD: usize = 2;

/// Reads `columns` of a row file on a thread of its own and hands each
/// batch to `consume`, in order; stops at the first error of either.
fn read_rows(
    path: &Path,
    columns: &[String],
    mut consume: impl FnMut(&RecordBatch) -> Result<(), AnalyzeError>,
) -> Result<(), AnalyzeError> {
    let (_, batches) = batches(path, Some(columns))?;
    std::thread::scope(|scope| {
        let (sender, receiver) =
            std::sync::mpsc::sync_channel::<Result<RecordBatch, TrainingError>>(READ_AHEAD);
        scope.spawn(move || {
            for batch in batches {
                // The consumer stopped: stop reading.
                if sender.send(batch).is_err() {
                    break;
                }
            }
        });
        for batch in receiver {
            consume(&batch?)?;
        }
        Ok(())
    })
}

fn threads(items: usize) -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.max(1))
}

/// Maps `items` with `f` on every available core, keeping the order; each
/// thread takes the next item when done with one, so unequal items balance.
pub(super) fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = threads(items.len());
    if threads <= 1 {
        return items.iter().map(&f).collect();
    }
    let next = AtomicUsize::new(0);
    let mut done: Vec<(usize, R)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (f, next) = (&f, &next);
                scope.spawn(move || {
                    let mut done = Vec::new();
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(index) else {
                            return done;
                        };
                        done.push((index, f(item)));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| handle.join().expect("analysis thread panicked"))
            .collect()
    });
    done.sort_unstable_by_key(|(index, _)| *index);
    done.into_iter().map(|(_, result)| result).collect()
}

/// [`parallel_map`] over owned items.
fn parallel_map_owned<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let slots: Vec<std::sync::Mutex<Option<T>>> = items
        .into_iter()
        .map(|item| std::sync::Mutex::new(Some(item)))
        .collect();
    parallel_map(&slots, |slot| {
        f(slot
            .lock()
            .expect("each slot is taken once")
            .take()
            .expect("each slot is taken once"))
    })
}

/// Calls `f(index, item)` for every item, the items split into one
/// contiguous run per core.
fn parallel_for_each<T: Send>(items: &mut [T], f: impl Fn(usize, &mut T) + Sync) {
    let threads = threads(items.len());
    if threads <= 1 {
        for (index, item) in items.iter_mut().enumerate() {
            f(index, item);
        }
        return;
    }
    let run = items.len().div_ceil(threads);
    std::thread::scope(|scope| {
        for (part, run_items) in items.chunks_mut(run).enumerate() {
            let f = &f;
            scope.spawn(move || {
                for (offset, item) in run_items.iter_mut().enumerate() {
                    f(part * run + offset, item);
                }
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row's chunk as `spans` reports it, against the rule itself.
    fn chunk_per_row(chunks: &RowChunks, batches: &[usize]) -> Vec<Option<usize>> {
        let mut seen = Vec::new();
        let mut first = 0;
        for len in batches {
            let mut rows = vec![None; *len];
            let mut last_end = 0;
            chunks.spans(first, *len, |chunk, span| {
                assert!(span.start >= last_end && span.start < span.end, "{span:?}");
                last_end = span.end;
                for row in span {
                    assert!(rows[row].replace(chunk).is_none(), "row {row} twice");
                }
            });
            seen.extend(rows);
            first += len;
        }
        seen
    }

    #[test]
    fn spans_cover_each_row_once_in_its_chunk() {
        let batches = [7, 1, 0, 13, 5, 30];
        let rows: usize = batches.iter().sum();
        for size in [1, 3, 7, 8, 100] {
            let expected: Vec<Option<usize>> = (0..rows).map(|row| Some(row / size)).collect();
            assert_eq!(
                chunk_per_row(&RowChunks::Rows(size), &batches),
                expected,
                "size {size}"
            );
        }
        assert_eq!(
            chunk_per_row(&RowChunks::Whole, &batches),
            vec![Some(0); rows]
        );
        let assigned: Vec<u32> = (0..rows as u32)
            .map(|row| match row % 11 {
                0 => NO_CHUNK,
                1..=5 => row / 9,
                _ => 3,
            })
            .collect();
        let expected: Vec<Option<usize>> = assigned
            .iter()
            .map(|chunk| (*chunk != NO_CHUNK).then_some(*chunk as usize))
            .collect();
        assert_eq!(
            chunk_per_row(&RowChunks::Assigned(assigned), &batches),
            expected
        );
    }

    #[test]
    fn parallel_maps_keep_the_order() {
        let items: Vec<u64> = (0..1_000).collect();
        let squares = parallel_map(&items, |n| {
            // Unequal work, so threads finish out of order.
            if n % 7 == 0 {
                std::thread::sleep(std::time::Duration::from_micros(50));
            }
            n * n
        });
        assert_eq!(squares, items.iter().map(|n| n * n).collect::<Vec<_>>());
        assert_eq!(
            parallel_map_owned(items.clone(), |n| n + 1),
            items.iter().map(|n| n + 1).collect::<Vec<_>>()
        );
        let mut doubled = items.clone();
        parallel_for_each(&mut doubled, |index, n| {
            assert_eq!(*n, index as u64);
            *n *= 2;
        });
        assert_eq!(doubled, items.iter().map(|n| n * 2).collect::<Vec<_>>());
    }

    #[test]
    fn values_convert_to_the_compared_kind() {
        use arrow::array::{Int64Array, TimestampMillisecondArray};
        let texts = StringArray::from(vec![Some(" 1.5"), Some("x"), None, Some("NaN")]);
        let Values::Numbers(numbers) = values(&texts, FeatureKind::Numeric) else {
            panic!("numbers");
        };
        assert_eq!(numbers.value(0), 1.5);
        assert!(numbers.is_null(1) && numbers.is_null(2));
        assert!(numbers.value(3).is_nan());
        let integers = Int64Array::from(vec![Some(3), None]);
        let Values::Texts(categories) = values(&integers, FeatureKind::Categorical) else {
            panic!("texts");
        };
        assert_eq!(categories.value(0), "3");
        assert!(categories.is_null(1));
        let times = TimestampMillisecondArray::from(vec![1_000]);
        let Values::Texts(categories) = values(&times, FeatureKind::Categorical) else {
            panic!("texts");
        };
        assert_eq!(categories.value(0), "1000");
    }
}
