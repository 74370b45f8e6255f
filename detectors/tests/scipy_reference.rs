//! Cross-check of the drift statistics against SciPy.
//!
//! `fixtures/scipy/reference_values.json` was written by
//! `fixtures/scipy/generate.py` (SciPy's `ks_2samp`, `kolmogorov`,
//! `chi2_contingency`, `jensenshannon`, `wasserstein_distance`, `binomtest`,
//! `ttest_rel`).

use detectors::drift;
use serde_json::Value;

fn cases() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/scipy/reference_values.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

fn counts(value: &Value) -> Vec<u64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

fn relative_close(a: f64, b: f64, tolerance: f64) -> bool {
    (a - b).abs() <= tolerance * a.abs().max(b.abs()) || (a - b).abs() <= 1e-300
}

/// Counts of two samples over bins with an edge at every distinct value, so
/// the binned KS statistic is the exact one.
fn binned(a: &[f64], b: &[f64]) -> (Vec<u64>, Vec<u64>) {
    let mut edges: Vec<f64> = a.iter().chain(b).copied().collect();
    edges.sort_by(f64::total_cmp);
    edges.dedup();
    let count = |sample: &[f64]| {
        let mut counts = vec![0u64; edges.len() + 1];
        for value in sample {
            counts[edges.partition_point(|edge| edge < value)] += 1;
        }
        counts
    };
    (count(a), count(b))
}

#[test]
fn ks_statistic_and_exact_p_value_match_scipy() {
    for case in cases()["ks_exact"].as_array().unwrap() {
        let (a, b) = (floats(&case["a"]), floats(&case["b"]));
        let (counts_a, counts_b) = binned(&a, &b);
        let result = drift::ks_binned(&counts_a, &counts_b).unwrap();
        let expected_statistic = case["statistic"].as_f64().unwrap();
        let expected_p = case["p_value"].as_f64().unwrap();
        assert!(
            (result.statistic - expected_statistic).abs() < 1e-12,
            "{} vs {expected_statistic}",
            result.statistic
        );
        assert!(
            relative_close(result.p_value, expected_p, 1e-8),
            "n={} m={}: p {} vs SciPy {expected_p}",
            a.len(),
            b.len(),
            result.p_value
        );
    }
}

#[test]
fn ks_asymptotic_p_value_is_close_to_scipy() {
    // SciPy's asymptotic method uses the one-sample distribution at
    // round(n·m/(n+m)); Tidewatch uses the Kolmogorov limit with Stephens'
    // correction. Both approximate the same exact value; they agree to 0.01.
    for case in cases()["ks_asymptotic"].as_array().unwrap() {
        let (a, b) = (floats(&case["a"]), floats(&case["b"]));
        let (counts_a, counts_b) = binned(&a, &b);
        let result = drift::ks_binned(&counts_a, &counts_b).unwrap();
        assert!((result.statistic - case["statistic"].as_f64().unwrap()).abs() < 1e-12);
        let expected_p = case["p_value"].as_f64().unwrap();
        assert!(
            (result.p_value - expected_p).abs() < 0.01,
            "p {} vs SciPy {expected_p}",
            result.p_value
        );
    }
}

#[test]
fn kolmogorov_survival_matches_scipy() {
    for case in cases()["kolmogorov"].as_array().unwrap() {
        let lambda = case["lambda"].as_f64().unwrap();
        let expected = case["survival"].as_f64().unwrap();
        let got = drift::kolmogorov_survival(lambda);
        assert!(
            (got - expected).abs() < 1e-12,
            "Q({lambda}) = {got}, SciPy {expected}"
        );
    }
}

#[test]
fn chi_square_matches_scipy() {
    for case in cases()["chi_square"].as_array().unwrap() {
        let result =
            drift::chi_square(&counts(&case["reference"]), &counts(&case["observed"])).unwrap();
        assert!(relative_close(
            result.statistic,
            case["statistic"].as_f64().unwrap(),
            1e-9
        ));
        assert!(relative_close(
            result.p_value,
            case["p_value"].as_f64().unwrap(),
            1e-9
        ));
        assert_eq!(
            result.degrees_of_freedom,
            case["dof"].as_u64().unwrap(),
            "{case}"
        );
    }
}

#[test]
fn jensen_shannon_and_hellinger_match_scipy() {
    let cases = cases();
    for case in cases["jensen_shannon"].as_array().unwrap() {
        let got =
            drift::jensen_shannon_distance(&counts(&case["reference"]), &counts(&case["current"]))
                .unwrap();
        assert!(
            (got - case["distance"].as_f64().unwrap()).abs() < 1e-12,
            "{case}"
        );
    }
    for case in cases["hellinger"].as_array().unwrap() {
        let got = drift::hellinger_distance(&counts(&case["reference"]), &counts(&case["current"]))
            .unwrap();
        assert!(
            (got - case["distance"].as_f64().unwrap()).abs() < 1e-12,
            "{case}"
        );
    }
}

#[test]
fn wasserstein_matches_scipy_for_equal_sizes() {
    for case in cases()["wasserstein"].as_array().unwrap() {
        let (mut a, mut b) = (floats(&case["a"]), floats(&case["b"]));
        a.sort_by(f64::total_cmp);
        b.sort_by(f64::total_cmp);
        // With K = n midpoint levels, Q(u_k) is the k-th order statistic.
        assert_eq!(drift::wasserstein_levels(a.len()).len(), a.len());
        let got = drift::wasserstein_from_quantiles(&a, &b).unwrap();
        let expected = case["distance"].as_f64().unwrap();
        assert!(
            relative_close(got, expected, 1e-9),
            "{got} vs SciPy {expected}"
        );
    }
}

#[test]
fn mcnemar_exact_p_values_match_scipy() {
    for case in cases()["mcnemar_exact"].as_array().unwrap() {
        let (b, c) = (
            case["only_champion"].as_u64().unwrap(),
            case["only_challenger"].as_u64().unwrap(),
        );
        let test = detectors::paired::mcnemar(b, c);
        let expected = case["p_value"].as_f64().unwrap();
        assert!(
            relative_close(test.p_value, expected, 1e-9),
            "({b}, {c}): {} vs SciPy {expected}",
            test.p_value
        );
    }
}

#[test]
fn paired_t_statistics_and_p_values_match_scipy() {
    for case in cases()["paired_t"].as_array().unwrap() {
        let (champion, challenger) = (floats(&case["champion"]), floats(&case["challenger"]));
        let test = detectors::paired::paired_t(&champion, &challenger).unwrap();
        let (statistic, p_value) = (
            case["statistic"].as_f64().unwrap(),
            case["p_value"].as_f64().unwrap(),
        );
        assert!(
            relative_close(test.statistic, statistic, 1e-9),
            "n = {}: t {} vs SciPy {statistic}",
            champion.len(),
            test.statistic
        );
        assert!(
            relative_close(test.p_value, p_value, 1e-7) || (test.p_value - p_value).abs() < 1e-12,
            "n = {}: p {} vs SciPy {p_value}",
            champion.len(),
            test.p_value
        );
    }
}

#[test]
fn two_proportion_z_p_values_match_scipy() {
    for case in cases()["two_proportion_z"].as_array().unwrap() {
        let count = |key: &str| case[key].as_u64().unwrap();
        let test = detectors::paired::two_proportions(
            count("right_champion"),
            count("n_champion"),
            count("right_challenger"),
            count("n_challenger"),
        )
        .unwrap();
        let want = case["p_value"].as_f64().unwrap();
        assert!(
            relative_close(test.p_value, want, 1e-9),
            "{case}: {} vs SciPy {want}",
            test.p_value
        );
    }
}

#[test]
fn welch_t_statistics_and_p_values_match_scipy() {
    for case in cases()["welch_t"].as_array().unwrap() {
        let (champion, challenger) = (floats(&case["champion"]), floats(&case["challenger"]));
        let test = detectors::paired::welch_t(&champion, &challenger).unwrap();
        let (statistic, p_value) = (
            case["statistic"].as_f64().unwrap(),
            case["p_value"].as_f64().unwrap(),
        );
        assert!(
            relative_close(test.statistic, statistic, 1e-9),
            "t {} vs SciPy {statistic}",
            test.statistic
        );
        assert!(
            relative_close(test.p_value, p_value, 1e-7),
            "p {} vs SciPy {p_value}",
            test.p_value
        );
    }
}
