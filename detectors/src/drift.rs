//! Drift statistics between a reference distribution and a current window.
//!
//! All functions take counts over the same bins (reference quantile bins for
//! numeric features, categories for categorical ones) and return `None` when a
//! side is empty: an empty window has no drift score, not a score of zero.
//!
//! ## Formulas
//! - **PSI** (population stability index): `Σ (c_i − r_i) · ln(c_i / r_i)`
//!   over bin proportions `r_i` (reference) and `c_i` (current). A proportion
//!   of zero is replaced by [`PSI_EPSILON`] (1e-4, as Evidently does) before
//!   the logarithm, so empty bins give a large but finite contribution.
//! - **KS** (two-sample Kolmogorov–Smirnov, binned): `max_i |R_i − C_i|` over
//!   the cumulative proportions at every bin edge. Because the bins are the
//!   reference's quantile bins, this is the exact KS statistic evaluated at the
//!   edges; the exact statistic over all points exceeds it by at most the
//!   largest reference mass strictly inside one bin (1/B for B quantile bins).
//!   The p-value uses the asymptotic Kolmogorov distribution with Stephens'
//!   small-sample correction `λ = (√nₑ + 0.12 + 0.11/√nₑ)·D`,
//!   `nₑ = n·m/(n + m)`.
//! - **Chi-square** (goodness of fit of the current counts to the reference
//!   proportions): `Σ (O_i − E_i)² / E_i` with `E_i = n · r_i`, reference
//!   proportions smoothed with [`PSI_EPSILON`] so a category never seen in the
//!   reference gives a large statistic rather than a division by zero;
//!   `k − 1` degrees of freedom for `k` bins, p-value from the chi-square
//!   survival function (`statrs`).

use statrs::distribution::{ChiSquared, ContinuousCDF};

/// Proportion used in place of zero in PSI and chi-square.
pub const PSI_EPSILON: f64 = 1e-4;

fn proportions(counts: &[u64]) -> Option<Vec<f64>> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    Some(counts.iter().map(|c| *c as f64 / total as f64).collect())
}

fn smoothed(proportion: f64) -> f64 {
    if proportion == 0.0 {
        PSI_EPSILON
    } else {
        proportion
    }
}

/// Population stability index of `current` against `reference` (same bins).
pub fn psi(reference: &[u64], current: &[u64]) -> Option<f64> {
    assert_eq!(
        reference.len(),
        current.len(),
        "psi needs the same bins on both sides"
    );
    let reference = proportions(reference)?;
    let current = proportions(current)?;
    Some(
        reference
            .iter()
            .zip(&current)
            .map(|(r, c)| {
                let (r, c) = (smoothed(*r), smoothed(*c));
                (c - r) * (c / r).ln()
            })
            .sum(),
    )
}

/// KS statistic and p-value over shared bins.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KsResult {
    /// Largest absolute difference of the cumulative proportions.
    pub statistic: f64,
    /// Asymptotic two-sided p-value.
    pub p_value: f64,
}

/// Two-sample KS over shared right-closed bins (see module docs).
pub fn ks_binned(reference: &[u64], current: &[u64]) -> Option<KsResult> {
    assert_eq!(
        reference.len(),
        current.len(),
        "ks needs the same bins on both sides"
    );
    let n: u64 = reference.iter().sum();
    let m: u64 = current.iter().sum();
    if n == 0 || m == 0 {
        return None;
    }
    let (mut cumulative_reference, mut cumulative_current) = (0u64, 0u64);
    let mut statistic: f64 = 0.0;
    for (r, c) in reference.iter().zip(current) {
        cumulative_reference += r;
        cumulative_current += c;
        let difference =
            (cumulative_reference as f64 / n as f64 - cumulative_current as f64 / m as f64).abs();
        statistic = statistic.max(difference);
    }
    Some(KsResult {
        statistic,
        p_value: ks_p_value(statistic, n, m),
    })
}

/// Asymptotic two-sided p-value of a two-sample KS statistic.
pub fn ks_p_value(statistic: f64, n: u64, m: u64) -> f64 {
    let effective = (n as f64 * m as f64) / (n as f64 + m as f64);
    let root = effective.sqrt();
    let lambda = (root + 0.12 + 0.11 / root) * statistic;
    kolmogorov_survival(lambda)
}

/// `Q_KS(λ) = 2 Σ_{k≥1} (−1)^{k−1} e^{−2k²λ²}`, clamped to `[0, 1]`.
pub fn kolmogorov_survival(lambda: f64) -> f64 {
    if lambda < 1e-3 {
        return 1.0;
    }
    let mut sum = 0.0;
    let mut sign = 1.0;
    for k in 1..=100 {
        let k = k as f64;
        let term = sign * (-2.0 * k * k * lambda * lambda).exp();
        sum += term;
        if term.abs() < 1e-16 {
            break;
        }
        sign = -sign;
    }
    (2.0 * sum).clamp(0.0, 1.0)
}

/// Chi-square statistic, degrees of freedom and p-value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChiSquareResult {
    /// `Σ (O − E)² / E`.
    pub statistic: f64,
    /// Bins minus one.
    pub degrees_of_freedom: u64,
    /// Survival function of the chi-square distribution at the statistic.
    pub p_value: f64,
}

/// Chi-square goodness of fit of `current` counts to `reference` proportions.
pub fn chi_square(reference: &[u64], current: &[u64]) -> Option<ChiSquareResult> {
    assert_eq!(
        reference.len(),
        current.len(),
        "chi-square needs the same bins on both sides"
    );
    if reference.len() < 2 {
        return None;
    }
    let reference = proportions(reference)?;
    let observed_total: u64 = current.iter().sum();
    if observed_total == 0 {
        return None;
    }
    let smoothed_total: f64 = reference.iter().map(|r| smoothed(*r)).sum();
    let statistic = reference
        .iter()
        .zip(current)
        .map(|(r, observed)| {
            let expected = observed_total as f64 * smoothed(*r) / smoothed_total;
            (*observed as f64 - expected).powi(2) / expected
        })
        .sum::<f64>();
    let degrees_of_freedom = reference.len() as u64 - 1;
    let distribution = ChiSquared::new(degrees_of_freedom as f64).ok()?;
    Some(ChiSquareResult {
        statistic,
        degrees_of_freedom,
        p_value: distribution.sf(statistic),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psi_matches_hand_computation() {
        let reference = [25, 25, 25, 25];
        let current = [10, 20, 30, 40];
        let expected: f64 = [(0.1, 0.25), (0.2, 0.25), (0.3, 0.25), (0.4, 0.25)]
            .iter()
            .map(|(c, r): &(f64, f64)| (c - r) * (c / r).ln())
            .sum();
        assert!((psi(&reference, &current).unwrap() - expected).abs() < 1e-15);
        assert_eq!(psi(&reference, &reference), Some(0.0));
        assert_eq!(psi(&reference, &[0, 0, 0, 0]), None);
    }

    #[test]
    fn psi_smooths_empty_bins() {
        let value = psi(&[50, 50], &[100, 0]).unwrap();
        let expected = (1.0 - 0.5) * (1.0f64 / 0.5).ln() + (1e-4 - 0.5) * (1e-4f64 / 0.5).ln();
        assert!((value - expected).abs() < 1e-12);
    }

    /// Exact two-sample KS by merging sorted samples, the oracle.
    fn exact_ks(a: &[f64], b: &[f64]) -> f64 {
        let mut points: Vec<f64> = a.iter().chain(b).cloned().collect();
        points.sort_by(f64::total_cmp);
        points
            .iter()
            .map(|x| {
                let fa = a.iter().filter(|v| *v <= x).count() as f64 / a.len() as f64;
                let fb = b.iter().filter(|v| *v <= x).count() as f64 / b.len() as f64;
                (fa - fb).abs()
            })
            .fold(0.0, f64::max)
    }

    #[test]
    fn binned_ks_equals_exact_ks_when_every_value_is_an_edge() {
        // Integer data with an edge at every integer: binned KS is exact.
        let a: Vec<f64> = (0..200).map(|i| (i % 7) as f64).collect();
        let b: Vec<f64> = (0..150).map(|i| ((i * 3) % 9) as f64).collect();
        let edges: Vec<f64> = (0..9).map(|i| i as f64).collect();
        let bin = |v: f64| edges.partition_point(|e| *e < v);
        let count = |sample: &[f64]| {
            let mut counts = vec![0u64; edges.len() + 1];
            sample.iter().for_each(|v| counts[bin(*v)] += 1);
            counts
        };
        let binned = ks_binned(&count(&a), &count(&b)).unwrap();
        assert!((binned.statistic - exact_ks(&a, &b)).abs() < 1e-12);
    }

    #[test]
    fn kolmogorov_survival_matches_known_values() {
        // Values of the Kolmogorov distribution's survival function
        // (scipy.special.kolmogorov): Q(0.5)=0.9639452436648751,
        // Q(1.0)=0.26999967167735456, Q(1.36)=0.04939779406, Q(2.0)=0.0006709252557796953.
        for (lambda, expected) in [
            (0.5, 0.963_945_243_664_875_1),
            (1.0, 0.269_999_671_677_354_56),
            (2.0, 0.000_670_925_255_779_695_3),
        ] {
            let got = kolmogorov_survival(lambda);
            assert!(
                (got - expected).abs() < 1e-10,
                "Q({lambda}) = {got}, expected {expected}"
            );
        }
    }

    #[test]
    fn chi_square_matches_hand_computation() {
        let result = chi_square(&[50, 30, 20], &[40, 40, 20]).unwrap();
        let expected = (40.0f64 - 50.0).powi(2) / 50.0 + (40.0f64 - 30.0).powi(2) / 30.0 + 0.0;
        assert!((result.statistic - expected).abs() < 1e-9);
        assert_eq!(result.degrees_of_freedom, 2);
        // Survival of chi-square(2) is exp(-x/2).
        assert!((result.p_value - (-expected / 2.0).exp()).abs() < 1e-12);
    }

    #[test]
    fn chi_square_handles_categories_unseen_in_the_reference() {
        let result = chi_square(&[50, 50, 0], &[45, 45, 10]).unwrap();
        assert!(result.statistic.is_finite());
        assert!(result.p_value < 1e-6);
    }
}
