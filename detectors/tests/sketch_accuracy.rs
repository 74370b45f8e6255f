//! Every sketch against an exact oracle over several generated
//! distributions: normal, log-normal, uniform, heavy-tailed (Pareto),
//! discrete (Poisson, many ties), and a mixture with zeros and negatives.
//!
//! Stated bounds, checked here:
//! - quantiles within 1 % relative error of the exact order statistic;
//! - the binned KS statistic within 0.01 of the exact two-sample statistic;
//! - PSI exactly equal to PSI computed from raw counts on the decile bins;
//! - merge(sketch(a), sketch(b)) equals sketch(a ∪ b): bins and quantiles
//!   exactly, moments to 1e-9.

use detectors::metrics::{compute, DriftThresholds};
use detectors::numeric::{BinEdges, NumericSketch, QUANTILE_RELATIVE_ACCURACY};
use detectors::reference::{FeatureReference, NumericReference};
use detectors::sketch::FeatureSketch;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, Normal, Pareto, Poisson};

type Generator = fn(&mut StdRng, bool) -> f64;

/// (name, sampler(rng, shifted)): `shifted` draws the "current" window's
/// distribution, slightly different from the reference.
fn distributions() -> Vec<(&'static str, Generator)> {
    vec![
        ("normal", |rng, shifted| {
            Normal::new(if shifted { 10.3 } else { 10.0 }, 2.0)
                .unwrap()
                .sample(rng)
        }),
        ("log-normal", |rng, shifted| {
            LogNormal::new(if shifted { 0.2 } else { 0.0 }, 1.2)
                .unwrap()
                .sample(rng)
        }),
        ("uniform", |rng, shifted| {
            rng.random_range(if shifted { -0.8..1.2 } else { -1.0..1.0 })
        }),
        ("pareto", |rng, shifted| {
            Pareto::new(1.0, if shifted { 1.3 } else { 1.5 })
                .unwrap()
                .sample(rng)
        }),
        ("poisson", |rng, shifted| {
            Poisson::new(if shifted { 3.4 } else { 3.0 })
                .unwrap()
                .sample(rng)
        }),
        ("zeros-and-negatives", |rng, shifted| {
            let draw: f64 = rng.random();
            if draw < 0.25 {
                0.0
            } else if draw < (if shifted { 0.6 } else { 0.5 }) {
                -rng.random_range(0.5..50.0)
            } else {
                rng.random_range(1.0f64..500.0).round()
            }
        }),
    ]
}

fn sample(generator: Generator, n: usize, shifted: bool, seed: u64) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| generator(&mut rng, shifted)).collect()
}

fn sketch_of(values: &[f64], edges: Option<&BinEdges>) -> NumericSketch {
    let mut sketch = NumericSketch::new(edges);
    values.iter().for_each(|v| sketch.add(*v, edges));
    sketch
}

/// Exact two-sample KS statistic (sorted merge), the oracle.
fn exact_ks(a: &[f64], b: &[f64]) -> f64 {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (mut i, mut j, mut d) = (0usize, 0usize, 0.0f64);
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / a.len() as f64 - j as f64 / b.len() as f64).abs());
    }
    d
}

#[test]
fn quantiles_are_within_one_percent_relative_error() {
    for (name, generator) in distributions() {
        let values = sample(generator, 50_000, false, 1);
        let sketch = sketch_of(&values, None);
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        for q in [
            0.0, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0,
        ] {
            let exact = sorted[(q * (sorted.len() - 1) as f64).floor() as usize];
            let estimate = sketch.quantile(q).unwrap();
            assert!(
                (estimate - exact).abs() <= QUANTILE_RELATIVE_ACCURACY * exact.abs() + 1e-9,
                "{name} q={q}: {estimate} vs exact {exact}"
            );
        }
    }
}

#[test]
fn binned_ks_is_within_a_hundredth_of_the_exact_statistic() {
    for (name, generator) in distributions() {
        let reference_values = sample(generator, 20_000, false, 2);
        let reference = NumericReference::from_values(reference_values.clone(), 0).unwrap();
        let edges = BinEdges::new(reference.edges.clone()).unwrap();
        for (shifted, seed) in [(false, 3), (true, 4)] {
            let current = sample(generator, 5_000, shifted, seed);
            let sketch = sketch_of(&current, Some(&edges));
            let metrics = compute(
                &FeatureSketch::Numeric(sketch),
                Some(&FeatureReference::Numeric(reference.clone())),
                DriftThresholds::default(),
            );
            let binned = metrics.ks_statistic.unwrap();
            let exact = exact_ks(&reference_values, &current);
            assert!(
                binned <= exact + 1e-12,
                "{name}: binned {binned} cannot exceed exact {exact}"
            );
            assert!(
                exact - binned <= 0.01,
                "{name} shifted={shifted}: binned {binned} vs exact {exact}"
            );
        }
    }
}

#[test]
fn psi_is_exact_on_the_reference_deciles() {
    for (name, generator) in distributions() {
        let reference_values = sample(generator, 10_000, false, 5);
        let current = sample(generator, 3_000, true, 6);
        let reference = NumericReference::from_values(reference_values.clone(), 0).unwrap();
        let edges = BinEdges::new(reference.edges.clone()).unwrap();
        let metrics = compute(
            &FeatureSketch::Numeric(sketch_of(&current, Some(&edges))),
            Some(&FeatureReference::Numeric(reference.clone())),
            DriftThresholds::default(),
        );
        // Oracle: decile edges straight from the sorted reference, raw counts.
        let mut sorted = reference_values.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let mut deciles: Vec<f64> = (1..10).map(|k| sorted[(k * n).div_ceil(10) - 1]).collect();
        deciles.dedup();
        let count = |values: &[f64]| {
            let mut counts = vec![0u64; deciles.len() + 1];
            values
                .iter()
                .for_each(|v| counts[deciles.partition_point(|e| e < v)] += 1);
            counts
        };
        let expected = detectors::drift::psi(&count(&reference_values), &count(&current)).unwrap();
        assert!(
            (metrics.psi.unwrap() - expected).abs() < 1e-12,
            "{name}: {:?} vs {expected}",
            metrics.psi
        );
    }
}

#[test]
fn merging_sketches_equals_sketching_the_union() {
    for (name, generator) in distributions() {
        let reference =
            NumericReference::from_values(sample(generator, 5_000, false, 7), 0).unwrap();
        let edges = BinEdges::new(reference.edges.clone()).unwrap();
        let values = sample(generator, 9_000, true, 8);
        let parts: Vec<&[f64]> = values.chunks(2_500).collect();
        let mut merged = sketch_of(parts[0], Some(&edges));
        for part in &parts[1..] {
            merged.merge(&sketch_of(part, Some(&edges))).unwrap();
        }
        let whole = sketch_of(&values, Some(&edges));
        assert_eq!(merged.bin_counts(), whole.bin_counts(), "{name}");
        for q in [0.01, 0.1, 0.5, 0.9, 0.99] {
            assert_eq!(merged.quantile(q), whole.quantile(q), "{name} q={q}");
        }
        let (a, b) = (merged.moments(), whole.moments());
        assert_eq!(a.count(), b.count());
        assert_eq!((a.min(), a.max()), (b.min(), b.max()));
        let close = |x: f64, y: f64| (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0);
        assert!(close(a.mean().unwrap(), b.mean().unwrap()), "{name}");
        assert!(close(a.std_dev().unwrap(), b.std_dev().unwrap()), "{name}");
    }
}

#[test]
fn sketch_memory_per_window_is_at_most_8_kib() {
    // The quantile sketch grows with the dynamic range of the values (one
    // 4-byte bucket per 2 % of magnitude, at most 896 per sign); bins add 8
    // bytes each.
    for (name, generator) in distributions() {
        let reference =
            NumericReference::from_values(sample(generator, 5_000, false, 9), 0).unwrap();
        let edges = BinEdges::new(reference.edges.clone()).unwrap();
        let sketch = sketch_of(&sample(generator, 20_000, true, 10), Some(&edges));
        eprintln!("{name}: {} bytes", sketch.heap_bytes());
        assert!(
            sketch.heap_bytes() <= 8 * 1024,
            "{name}: {} bytes",
            sketch.heap_bytes()
        );
    }
}

#[test]
fn the_worst_case_window_sketch_fits_in_8_kib() {
    // Both signs over 24 decades: every bucket budget is used.
    let reference =
        NumericReference::from_values((0..10_000).map(|i| i as f64 - 5_000.0).collect(), 0)
            .unwrap();
    let edges = BinEdges::new(reference.edges.clone()).unwrap();
    let mut sketch = NumericSketch::new(Some(&edges));
    for i in 0..200_000 {
        let magnitude = 10f64.powf(-12.0 + 24.0 * (i as f64 / 200_000.0));
        sketch.add(
            if i % 2 == 0 { magnitude } else { -magnitude },
            Some(&edges),
        );
    }
    eprintln!("worst case: {} bytes", sketch.heap_bytes());
    assert!(
        sketch.heap_bytes() <= 8 * 1024,
        "{} bytes",
        sketch.heap_bytes()
    );
}
