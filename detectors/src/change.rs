//! Streaming change detectors for a per-event signal (an error indicator,
//! a score) or a per-window metric series (a PSI, an accuracy).
//!
//! Each detector takes one value at a time with `update` and says whether a
//! change was detected at that value. Defaults follow River's (the Python
//! streaming-ML library), so thresholds tuned there carry over:
//!
//! | detector | input | River defaults |
//! |---|---|---|
//! | [`Adwin`] | any bounded real | `delta = 0.002`, `clock = 32`, `max_buckets = 5`, `min_window_length = 5`, `grace_period = 10` |
//! | [`PageHinkley`] | any real | `min_instances = 30`, `delta = 0.005`, `threshold = 50`, `alpha = 1 − 1e-4`, both directions |
//! | [`Ddm`] | 0/1 errors | `warm_start = 30`, `warning_threshold = 2`, `drift_threshold = 3` |
//!
//! Memory: ADWIN keeps O(max_buckets · log(width)) buckets; Page-Hinkley and
//! DDM keep a handful of numbers.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// ADWIN's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdwinConfig {
    /// Confidence: smaller means fewer false alarms and later detections.
    pub delta: f64,
    /// Check for a change every `clock` values.
    pub clock: u64,
    /// Buckets per level before the two oldest merge.
    pub max_buckets: usize,
    /// Smallest sub-window either side of a cut.
    pub min_window_length: u64,
    /// Values seen before the first check.
    pub grace_period: u64,
}

impl Default for AdwinConfig {
    fn default() -> Self {
        Self {
            delta: 0.002,
            clock: 32,
            max_buckets: 5,
            min_window_length: 5,
            grace_period: 10,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Bucket {
    total: f64,
    /// Sum of squared deviations from the bucket's mean.
    variance: f64,
}

/// ADWIN (Bifet & Gavaldà, 2007): an adaptive window over the most recent
/// values that drops its oldest part whenever the means of an older and a
/// newer sub-window differ more than a Hoeffding-style bound allows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Adwin {
    config: AdwinConfig,
    /// `levels[i]` holds buckets of `2^i` values, oldest first.
    levels: Vec<VecDeque<Bucket>>,
    width: u64,
    total: f64,
    /// Sum of squared deviations from the window mean.
    variance: f64,
    tick: u64,
}

impl Adwin {
    /// A detector with `config`.
    pub fn new(config: AdwinConfig) -> Self {
        Self {
            config,
            levels: Vec::new(),
            width: 0,
            total: 0.0,
            variance: 0.0,
            tick: 0,
        }
    }

    /// Number of values in the window.
    pub fn width(&self) -> u64 {
        self.width
    }

    /// Mean of the window; `None` while empty.
    pub fn mean(&self) -> Option<f64> {
        (self.width > 0).then(|| self.total / self.width as f64)
    }

    /// Population variance of the window; `None` while empty.
    pub fn variance(&self) -> Option<f64> {
        (self.width > 0).then(|| self.variance / self.width as f64)
    }

    /// Adds a value; true when a change was detected (the window shrank).
    pub fn update(&mut self, value: f64) -> bool {
        self.tick += 1;
        self.insert(value);
        self.compress();
        if self.tick.is_multiple_of(self.config.clock) && self.width > self.config.grace_period {
            return self.detect();
        }
        false
    }

    fn insert(&mut self, value: f64) {
        if self.width > 0 {
            let mean = self.total / self.width as f64;
            self.variance += self.width as f64 * (value - mean).powi(2) / (self.width + 1) as f64;
        }
        self.width += 1;
        self.total += value;
        if self.levels.is_empty() {
            self.levels.push(VecDeque::new());
        }
        self.levels[0].push_back(Bucket {
            total: value,
            variance: 0.0,
        });
    }

    fn compress(&mut self) {
        let mut level = 0;
        while level < self.levels.len() {
            if self.levels[level].len() <= self.config.max_buckets {
                break;
            }
            let size = (1u64 << level) as f64;
            let first = self.levels[level].pop_front().expect("over-full level");
            let second = self.levels[level].pop_front().expect("over-full level");
            let difference = first.total / size - second.total / size;
            let merged = Bucket {
                total: first.total + second.total,
                variance: first.variance
                    + second.variance
                    + size * size * difference * difference / (2.0 * size),
            };
            if level + 1 == self.levels.len() {
                self.levels.push(VecDeque::new());
            }
            self.levels[level + 1].push_back(merged);
            level += 1;
        }
    }

    fn evaluate_cut(&self, n0: u64, n1: u64, mean_difference: f64) -> bool {
        let width = self.width as f64;
        let delta_prime = (2.0 * width.ln() / self.config.delta).ln();
        let minimum = self.config.min_window_length;
        let reciprocal = 1.0 / (n0 - minimum + 1) as f64 + 1.0 / (n1 - minimum + 1) as f64;
        let variance = self.variance / width;
        let epsilon = (2.0 * reciprocal * variance * delta_prime).sqrt()
            + 2.0 / 3.0 * delta_prime * reciprocal;
        mean_difference.abs() > epsilon
    }

    fn detect(&mut self) -> bool {
        let mut detected = false;
        'rescan: loop {
            let (mut n0, mut total0) = (0u64, 0.0);
            // Oldest values first: the highest level, front to back.
            for level in (0..self.levels.len()).rev() {
                let size = 1u64 << level;
                for index in 0..self.levels[level].len() {
                    if level == 0 && index + 1 == self.levels[0].len() {
                        break 'rescan;
                    }
                    n0 += size;
                    total0 += self.levels[level][index].total;
                    let n1 = self.width - n0;
                    let total1 = self.total - total0;
                    let minimum = self.config.min_window_length;
                    if n0 >= minimum
                        && n1 >= minimum
                        && self.evaluate_cut(n0, n1, total0 / n0 as f64 - total1 / n1 as f64)
                    {
                        detected = true;
                        self.drop_oldest_bucket();
                        continue 'rescan;
                    }
                }
            }
            break;
        }
        detected
    }

    fn drop_oldest_bucket(&mut self) {
        let Some(level) = (0..self.levels.len())
            .rev()
            .find(|l| !self.levels[*l].is_empty())
        else {
            return;
        };
        let bucket = self.levels[level].pop_front().expect("non-empty level");
        let size = 1u64 << level;
        self.width -= size;
        self.total -= bucket.total;
        if self.width == 0 {
            self.variance = 0.0;
            return;
        }
        let bucket_mean = bucket.total / size as f64;
        let rest_mean = self.total / self.width as f64;
        let (n_bucket, n_rest) = (size as f64, self.width as f64);
        self.variance -= bucket.variance
            + n_bucket * n_rest * (bucket_mean - rest_mean).powi(2) / (n_bucket + n_rest);
        self.variance = self.variance.max(0.0);
        while self.levels.last().is_some_and(VecDeque::is_empty) {
            self.levels.pop();
        }
    }
}

/// Page-Hinkley's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PageHinkleyConfig {
    /// Values seen before the test is applied.
    pub min_instances: u64,
    /// Magnitude of change tolerated without alarm.
    pub delta: f64,
    /// Cumulative deviation that raises the alarm.
    pub threshold: f64,
    /// Forgetting factor of the cumulative sums.
    pub alpha: f64,
    /// Detect increases.
    pub detect_increase: bool,
    /// Detect decreases.
    pub detect_decrease: bool,
}

impl Default for PageHinkleyConfig {
    fn default() -> Self {
        Self {
            min_instances: 30,
            delta: 0.005,
            threshold: 50.0,
            alpha: 1.0 - 0.0001,
            detect_increase: true,
            detect_decrease: true,
        }
    }
}

/// The Page-Hinkley test: cumulative deviations from the running mean,
/// compared with their running extreme. Resets after each detection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PageHinkley {
    config: PageHinkleyConfig,
    count: u64,
    mean: f64,
    sum_increase: f64,
    sum_decrease: f64,
    min_increase: f64,
    max_decrease: f64,
}

impl PageHinkley {
    /// A detector with `config`.
    pub fn new(config: PageHinkleyConfig) -> Self {
        Self {
            config,
            count: 0,
            mean: 0.0,
            sum_increase: 0.0,
            sum_decrease: 0.0,
            min_increase: f64::INFINITY,
            max_decrease: f64::NEG_INFINITY,
        }
    }

    /// Adds a value; true when a change was detected (the state then resets).
    pub fn update(&mut self, value: f64) -> bool {
        self.count += 1;
        self.mean += (value - self.mean) / self.count as f64;
        let deviation = value - self.mean;
        self.sum_increase = self.config.alpha * self.sum_increase + deviation - self.config.delta;
        self.sum_decrease = self.config.alpha * self.sum_decrease + deviation + self.config.delta;
        self.min_increase = self.min_increase.min(self.sum_increase);
        self.max_decrease = self.max_decrease.max(self.sum_decrease);
        if self.count < self.config.min_instances {
            return false;
        }
        let increase = self.config.detect_increase
            && self.sum_increase - self.min_increase > self.config.threshold;
        let decrease = self.config.detect_decrease
            && self.max_decrease - self.sum_decrease > self.config.threshold;
        if increase || decrease {
            *self = Self::new(self.config);
            return true;
        }
        false
    }
}

/// DDM's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DdmConfig {
    /// Errors seen before the test is applied.
    pub warm_start: u64,
    /// Standard deviations above the best error rate that raise a warning.
    pub warning_threshold: f64,
    /// Standard deviations above the best error rate that signal drift.
    pub drift_threshold: f64,
}

impl Default for DdmConfig {
    fn default() -> Self {
        Self {
            warm_start: 30,
            warning_threshold: 2.0,
            drift_threshold: 3.0,
        }
    }
}

/// What DDM says about one error indicator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DdmState {
    /// Error rate as good as the best seen.
    Stable,
    /// Error rate above the warning level.
    Warning,
    /// Error rate above the drift level; the detector reset.
    Drift,
}

/// The Drift Detection Method (Gama et al., 2004) on a stream of 0/1
/// prediction errors: the error rate `p` with binomial std `s` is compared
/// with the lowest `p + s` seen.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ddm {
    config: DdmConfig,
    count: u64,
    errors: u64,
    best_p: f64,
    best_s: f64,
}

impl Ddm {
    /// A detector with `config`.
    pub fn new(config: DdmConfig) -> Self {
        Self {
            config,
            count: 0,
            errors: 0,
            best_p: f64::INFINITY,
            best_s: f64::INFINITY,
        }
    }

    /// Adds one prediction's outcome (`true` = the prediction was wrong).
    pub fn update(&mut self, error: bool) -> DdmState {
        self.count += 1;
        self.errors += u64::from(error);
        let n = self.count as f64;
        let p = self.errors as f64 / n;
        let s = (p * (1.0 - p) / n).sqrt();
        if self.count < self.config.warm_start {
            return DdmState::Stable;
        }
        if p + s <= self.best_p + self.best_s {
            self.best_p = p;
            self.best_s = s;
        }
        if p + s > self.best_p + self.config.drift_threshold * self.best_s {
            *self = Self::new(self.config);
            return DdmState::Drift;
        }
        if p + s > self.best_p + self.config.warning_threshold * self.best_s {
            return DdmState::Warning;
        }
        DdmState::Stable
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};
    use rand_distr::{Distribution, Normal};

    #[test]
    fn adwin_window_statistics_are_those_of_its_last_values() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut adwin = Adwin::new(AdwinConfig::default());
        let mut values = Vec::new();
        for i in 0..3_000 {
            let value = if i < 1_500 {
                rng.random::<f64>()
            } else {
                rng.random::<f64>() + 0.6
            };
            values.push(value);
            adwin.update(value);
            // The window is exactly the last `width` values: exact oracle.
            let window = &values[values.len() - adwin.width() as usize..];
            let mean = window.iter().sum::<f64>() / window.len() as f64;
            let variance =
                window.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / window.len() as f64;
            assert!((adwin.mean().unwrap() - mean).abs() < 1e-9, "at {i}");
            assert!(
                (adwin.variance().unwrap() - variance).abs() < 1e-9,
                "at {i}"
            );
        }
    }

    #[test]
    fn adwin_detects_a_mean_shift_soon_and_not_before() {
        let normal = Normal::new(0.0, 0.5).unwrap();
        for seed in 0..5 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut adwin = Adwin::new(AdwinConfig::default());
            let mut detections = Vec::new();
            for i in 0..4_000 {
                let value = normal.sample(&mut rng) + if i >= 2_000 { 1.0 } else { 0.0 };
                if adwin.update(value) {
                    detections.push(i);
                }
            }
            assert!(
                detections.iter().all(|i| *i >= 2_000),
                "seed {seed}: false alarm at {detections:?}"
            );
            let first = detections.first().copied().unwrap_or(usize::MAX);
            assert!(first < 2_100, "seed {seed}: detected at {first}");
            assert!(
                adwin.width() < 2_100,
                "the old part of the window was dropped"
            );
            assert!((adwin.mean().unwrap() - 1.0).abs() < 0.1);
        }
    }

    #[test]
    fn page_hinkley_detects_a_step_after_a_few_values() {
        let mut detector = PageHinkley::new(PageHinkleyConfig::default());
        let mut detected = Vec::new();
        for i in 0..200 {
            let value = if i < 100 { 0.0 } else { 10.0 };
            if detector.update(value) {
                detected.push(i);
            }
        }
        // After the step, each value adds about 10 − mean − δ to the sum;
        // crossing 50 takes six values.
        assert_eq!(detected.first(), Some(&105), "{detected:?}");
    }

    #[test]
    fn page_hinkley_is_quiet_when_noise_is_small_against_the_threshold() {
        // The threshold is in the input's units: a cumulative sum of unit
        // noise wanders past 50 within a few thousand values, noise of 0.1 does not.
        let mut rng = StdRng::seed_from_u64(9);
        let normal = Normal::new(5.0, 0.1).unwrap();
        let mut detector = PageHinkley::new(PageHinkleyConfig::default());
        assert!((0..5_000).all(|_| !detector.update(normal.sample(&mut rng))));
    }

    #[test]
    fn ddm_flags_a_rising_error_rate() {
        // DDM's minimum of p + s is noisy right after the warm start, so an
        // early false alarm is possible (a known property of the method);
        // the change must be caught within 400 values (DDM tracks the error
        // rate since its last reset, so it needs ~150 values at 0.4 to move
        // the rate three standard deviations above 0.1).
        for seed in 0..10 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut ddm = Ddm::new(DdmConfig::default());
            let mut false_alarms = 0;
            let mut detected_after = None;
            for i in 0..3_000 {
                let rate = if i < 2_000 { 0.1 } else { 0.4 };
                if ddm.update(rng.random::<f64>() < rate) == DdmState::Drift {
                    if i < 2_000 {
                        false_alarms += 1;
                    } else if detected_after.is_none() {
                        detected_after = Some(i);
                    }
                }
            }
            let first = detected_after.expect("drift detected");
            assert!(
                (2_000..2_400).contains(&first),
                "seed {seed}: drift at {first}"
            );
            assert!(
                false_alarms <= 2,
                "seed {seed}: {false_alarms} false alarms"
            );
        }
    }
}
