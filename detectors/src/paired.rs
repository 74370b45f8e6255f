//! Two model versions compared on the same requests: the evidence a
//! promotion policy decides on. Each request answered by both versions and
//! labelled gives one pair.
//!
//! - Classification: each version is right or wrong on each request.
//!   [`mcnemar`] counts the discordant pairs — `only_champion` (the
//!   champion right, the challenger wrong) and `only_challenger` — and
//!   tests one-sided whether the challenger is right more often than
//!   chance would make it among them: McNemar's exact test, `P(X ≥
//!   only_challenger)` with `X ~ Binomial(only_champion + only_challenger,
//!   ½)` (SciPy's `binomtest(..., alternative="greater")`).
//! - Regression: each version has an absolute error on each request.
//!   [`paired_t`] tests one-sided whether the champion's errors exceed the
//!   challenger's on average: the paired t-test of the differences
//!   (SciPy's `ttest_rel(champion, challenger, alternative="greater")`).
//!
//! When the versions answered different requests (a canary: each request
//! goes to one of them) there are no pairs, and the comparison is between
//! two samples:
//!
//! - Classification: [`two_proportions`], the one-sided two-proportion
//!   z-test with the pooled proportion (the square root of SciPy's
//!   `chi2_contingency(..., correction=False)` statistic, halved p-value).
//! - Regression: [`welch_t`], Welch's one-sided t-test of the absolute
//!   errors (SciPy's `ttest_ind(champion, challenger, equal_var=False,
//!   alternative="greater")`).
//!
//! Pure: counts and values in, statistics out.

use statrs::distribution::{Binomial, ContinuousCDF, DiscreteCDF, Normal, StudentsT};

/// McNemar's exact test of a challenger against a champion.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct McNemar {
    /// Pairs where only the champion was right.
    pub only_champion: u64,
    /// Pairs where only the challenger was right.
    pub only_challenger: u64,
    /// One-sided p-value: the challenger is not better.
    pub p_value: f64,
}

/// McNemar's exact one-sided test (see the module docs). With no
/// discordant pair the p-value is 1.
pub fn mcnemar(only_champion: u64, only_challenger: u64) -> McNemar {
    let n = only_champion + only_challenger;
    let p_value = if n == 0 || only_challenger == 0 {
        1.0
    } else {
        Binomial::new(0.5, n)
            .map(|binomial| binomial.sf(only_challenger - 1))
            .unwrap_or(1.0)
    };
    McNemar {
        only_champion,
        only_challenger,
        p_value,
    }
}

/// A one-sided paired t-test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairedT {
    /// Pairs.
    pub n: u64,
    /// Mean of the differences (champion − challenger).
    pub mean_difference: f64,
    /// The t statistic.
    pub statistic: f64,
    /// One-sided p-value: the champion's values do not exceed the
    /// challenger's on average.
    pub p_value: f64,
}

/// The paired t-test of `champion[i] − challenger[i]` (see the module
/// docs); `None` with fewer than two pairs, unequal lengths, or
/// differences that are all equal (no variance).
pub fn paired_t(champion: &[f64], challenger: &[f64]) -> Option<PairedT> {
    if champion.len() != challenger.len() || champion.len() < 2 {
        return None;
    }
    let n = champion.len() as f64;
    let differences: Vec<f64> = champion
        .iter()
        .zip(challenger)
        .map(|(a, b)| a - b)
        .collect();
    let mean = differences.iter().sum::<f64>() / n;
    let variance = differences.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (n - 1.0);
    if variance <= 0.0 || !variance.is_finite() {
        return None;
    }
    let statistic = mean / (variance / n).sqrt();
    let t = StudentsT::new(0.0, 1.0, n - 1.0).ok()?;
    Some(PairedT {
        n: champion.len() as u64,
        mean_difference: mean,
        statistic,
        p_value: t.sf(statistic),
    })
}

/// A one-sided test on two independent samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Unpaired {
    /// The z or t statistic (positive: the challenger is better).
    pub statistic: f64,
    /// One-sided p-value: the challenger is not better.
    pub p_value: f64,
}

/// The two-proportion z-test of `right_challenger` of `n_challenger`
/// against `right_champion` of `n_champion` (see the module docs); `None`
/// with an empty sample or no variance (both all right or all wrong).
pub fn two_proportions(
    right_champion: u64,
    n_champion: u64,
    right_challenger: u64,
    n_challenger: u64,
) -> Option<Unpaired> {
    if n_champion == 0 || n_challenger == 0 {
        return None;
    }
    let (na, nb) = (n_champion as f64, n_challenger as f64);
    let (pa, pb) = (right_champion as f64 / na, right_challenger as f64 / nb);
    let pooled = (right_champion + right_challenger) as f64 / (na + nb);
    let variance = pooled * (1.0 - pooled) * (1.0 / na + 1.0 / nb);
    if variance <= 0.0 {
        return None;
    }
    let statistic = (pb - pa) / variance.sqrt();
    let normal = Normal::new(0.0, 1.0).ok()?;
    Some(Unpaired {
        statistic,
        p_value: normal.sf(statistic),
    })
}

/// Welch's t-test that `champion`'s values exceed `challenger`'s on
/// average (see the module docs); `None` with fewer than two values on a
/// side or no variance.
pub fn welch_t(champion: &[f64], challenger: &[f64]) -> Option<Unpaired> {
    let moments = |values: &[f64]| {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (n, mean, variance)
    };
    if champion.len() < 2 || challenger.len() < 2 {
        return None;
    }
    let ((na, ma, va), (nb, mb, vb)) = (moments(champion), moments(challenger));
    let (sa, sb) = (va / na, vb / nb);
    if sa + sb <= 0.0 || (sa + sb).is_nan() {
        return None;
    }
    let statistic = (ma - mb) / (sa + sb).sqrt();
    let freedom = (sa + sb).powi(2) / (sa * sa / (na - 1.0) + sb * sb / (nb - 1.0));
    let t = StudentsT::new(0.0, 1.0, freedom).ok()?;
    Some(Unpaired {
        statistic,
        p_value: t.sf(statistic),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The binomial tail summed exactly (integers up to 2⁶⁴ for small n).
    fn exact_tail(n: u64, k: u64) -> f64 {
        let mut coefficient: u128 = 1;
        let mut tail: u128 = 0;
        for i in 0..=n {
            if i >= k {
                tail += coefficient;
            }
            coefficient = coefficient * u128::from(n - i) / u128::from(i + 1);
        }
        tail as f64 / 2f64.powi(n as i32)
    }

    #[test]
    fn unpaired_tests_refuse_empty_or_constant_samples_and_point_the_right_way() {
        assert!(two_proportions(0, 0, 5, 10).is_none());
        assert!(two_proportions(10, 10, 5, 5).is_none());
        let better = two_proportions(70, 100, 90, 100).unwrap();
        let worse = two_proportions(90, 100, 70, 100).unwrap();
        assert!(better.statistic > 0.0 && better.p_value < 0.01);
        assert!((better.p_value + worse.p_value - 1.0).abs() < 1e-12);
        assert!(welch_t(&[1.0], &[1.0, 2.0]).is_none());
        assert!(welch_t(&[1.0, 1.0], &[2.0, 2.0]).is_none());
        // Smaller errors for the challenger: a small p-value.
        let test = welch_t(&[2.0, 2.5, 3.0, 2.2], &[1.0, 1.2, 0.9, 1.1]).unwrap();
        assert!(test.statistic > 0.0 && test.p_value < 0.01, "{test:?}");
    }

    #[test]
    fn mcnemar_is_the_exact_binomial_tail() {
        for (b, c) in [(3, 12), (10, 25), (20, 20), (0, 7), (30, 2), (1, 1)] {
            let test = mcnemar(b, c);
            let expected = exact_tail(b + c, c);
            assert!(
                (test.p_value - expected).abs() < 1e-12,
                "({b}, {c}): {} vs {expected}",
                test.p_value
            );
        }
        assert_eq!(mcnemar(0, 0).p_value, 1.0);
        assert_eq!(mcnemar(5, 0).p_value, 1.0);
    }

    #[test]
    fn paired_t_needs_pairs_with_variance() {
        assert!(paired_t(&[1.0], &[0.0]).is_none());
        assert!(paired_t(&[1.0, 2.0], &[0.0]).is_none());
        assert!(
            paired_t(&[1.0, 2.0], &[0.0, 1.0]).is_none(),
            "constant difference"
        );
        let test = paired_t(&[3.0, 2.0, 4.0], &[1.0, 1.0, 1.0]).unwrap();
        assert_eq!(test.n, 3);
        assert!((test.mean_difference - 2.0).abs() < 1e-12);
        // d = (2, 1, 3): mean 2, s = 1, t = 2 / (1 / √3).
        assert!((test.statistic - 2.0 * 3f64.sqrt()).abs() < 1e-12);
    }
}
