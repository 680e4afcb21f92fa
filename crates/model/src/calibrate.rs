//! Thresholds: where a machine's score stops being normal.
//!
//! With labelled anomalies the threshold maximises F1 on held-out recordings; without them a gamma
//! distribution is fitted to held-out normal scores (squared distances are positive and
//! right-skewed, which a gamma describes well) and the threshold is its chosen percentile — for a
//! clip, one gamma per part of its score, each part's range (`crate::profile::calibrate_profile`).

use statrs::distribution::{ContinuousCDF, Gamma};
use statrs::function::gamma::digamma;

use crate::metrics;

/// The share of a healthy machine's clips a threshold set without fault labels may flag. With the
/// alert rule on top (several flagged clips out of the last few), this is what keeps the people on
/// call from learning to ignore the pager.
pub const DEFAULT_FALSE_ALARM_RATE: f64 = 0.01;

/// How a threshold was chosen; stored with it so operators know how far to trust it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum ThresholdMethod {
    /// Maximum F1 on labelled held-out recordings.
    MaxF1 { f1: f64 },
    /// The `percentile` of a gamma fitted to held-out normal scores.
    Gamma {
        shape: f64,
        scale: f64,
        percentile: f64,
    },
    /// A clip is out of range when one part of its score is beyond that part's normal range:
    /// the `part_percentile` of a gamma fitted to the part's held-out normal scores, the target
    /// `percentile`'s share of false alarms divided among the parts.
    PartRanges {
        percentile: f64,
        part_percentile: f64,
    },
}

/// The threshold maximising F1 of `score > threshold`; ties go to the middle of the best gap, so
/// it sits as far from both sides as the data allow. `None` without both kinds of score.
pub fn max_f1_threshold(normal: &[f64], anomaly: &[f64]) -> Option<(f64, f64)> {
    if normal.is_empty() || anomaly.is_empty() {
        return None;
    }
    let mut scores: Vec<f64> = normal.iter().chain(anomaly).copied().collect();
    scores.sort_by(f64::total_cmp);
    scores.dedup();
    // Candidates: midpoints between distinct scores, and just below the lowest.
    let mut candidates = vec![scores[0] - 1e-9_f64.max(scores[0].abs() * 1e-9)];
    candidates.extend(scores.windows(2).map(|w| (w[0] + w[1]) / 2.0));
    let mut best: Option<(f64, f64)> = None;
    for threshold in candidates {
        let f1 = metrics::detection(normal, anomaly, threshold).f1;
        if best.is_none_or(|(_, b)| f1 > b + 1e-12) {
            best = Some((threshold, f1));
        }
    }
    best
}

/// Maximum-likelihood gamma fit: the shape solves `ln k − ψ(k) = ln(mean) − mean(ln x)`, whose
/// left side falls monotonically from +∞ to 0, so bisection (on a log scale) always finds it.
pub fn fit_gamma(samples: &[f64]) -> Option<(f64, f64)> {
    let positive: Vec<f64> = samples
        .iter()
        .copied()
        .filter(|s| s.is_finite() && *s > 0.0)
        .collect();
    if positive.len() < 2 {
        return None;
    }
    let n = positive.len() as f64;
    let mean = positive.iter().sum::<f64>() / n;
    let mean_log = positive.iter().map(|s| s.ln()).sum::<f64>() / n;
    let s = mean.ln() - mean_log;
    if s <= 1e-12 {
        // All (nearly) equal: a very narrow gamma around the mean.
        return Some((1e6, mean / 1e6));
    }
    let gap = |shape: f64| shape.ln() - digamma(shape) - s;
    let (mut low, mut high) = (1e-6_f64.ln(), 1e8_f64.ln());
    for _ in 0..200 {
        let mid = (low + high) / 2.0;
        if gap(mid.exp()) > 0.0 {
            low = mid;
        } else {
            high = mid;
        }
    }
    let shape = ((low + high) / 2.0).exp();
    Some((shape, mean / shape))
}

/// The threshold at `percentile` (0–100) of a gamma fitted to `normal` scores.
pub fn gamma_threshold(normal: &[f64], percentile: f64) -> Option<(f64, ThresholdMethod)> {
    let (shape, scale) = fit_gamma(normal)?;
    let threshold = gamma_quantile(shape, scale, percentile / 100.0)?;
    Some((
        threshold,
        ThresholdMethod::Gamma {
            shape,
            scale,
            percentile,
        },
    ))
}

/// Inverse CDF of the gamma distribution with `shape` and `scale`.
pub fn gamma_quantile(shape: f64, scale: f64, p: f64) -> Option<f64> {
    let gamma = Gamma::new(shape, 1.0 / scale).ok()?;
    let q = gamma.inverse_cdf(p.clamp(1e-12, 1.0 - 1e-12));
    q.is_finite().then_some(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_f1_separates_separable_scores_in_the_middle() {
        let (threshold, f1) = max_f1_threshold(&[1.0, 2.0, 3.0], &[5.0, 6.0]).expect("threshold");
        assert_eq!(f1, 1.0);
        assert_eq!(threshold, 4.0);
    }

    #[test]
    fn max_f1_trades_precision_for_recall_on_overlap() {
        let normal = [1.0, 2.0, 3.0, 7.0];
        let anomaly = [2.5, 6.0, 8.0, 9.0];
        let (threshold, f1) = max_f1_threshold(&normal, &anomaly).expect("threshold");
        let direct = metrics::detection(&normal, &anomaly, threshold).f1;
        assert_eq!(f1, direct);
        // No other cut does better.
        for cut in [0.0, 1.5, 2.2, 2.7, 4.0, 6.5, 7.5, 8.5] {
            assert!(
                metrics::detection(&normal, &anomaly, cut).f1 <= f1 + 1e-12,
                "cut {cut}"
            );
        }
    }

    #[test]
    fn gamma_quantiles_match_known_values() {
        // Exponential (shape 1): the 90th percentile is ln(10) × scale.
        let q = gamma_quantile(1.0, 2.0, 0.9).expect("quantile");
        assert!((q - 2.0 * 10_f64.ln()).abs() < 1e-6, "{q}");
        // Chi-squared with 4 degrees of freedom = gamma(2, 2): 95th percentile 9.4877.
        let q = gamma_quantile(2.0, 2.0, 0.95).expect("quantile");
        assert!((q - 9.487_729).abs() < 1e-4, "{q}");
        assert_eq!(gamma_quantile(0.0, 2.0, 0.5), None, "no gamma has shape 0");
    }

    #[test]
    fn gamma_fit_recovers_its_parameters() {
        // Deterministic gamma(3, 2) sample through the inverse CDF on a grid.
        let samples: Vec<f64> = (1..2000)
            .filter_map(|i| gamma_quantile(3.0, 2.0, f64::from(i) / 2000.0))
            .collect();
        let (shape, scale) = fit_gamma(&samples).expect("fit");
        assert!((shape - 3.0).abs() < 0.1, "shape {shape}");
        assert!((scale - 2.0).abs() < 0.1, "scale {scale}");
        let (threshold, _) = gamma_threshold(&samples, 90.0).expect("threshold");
        let above =
            samples.iter().filter(|&&s| s > threshold).count() as f64 / samples.len() as f64;
        assert!(
            (above - 0.1).abs() < 0.01,
            "{above} above the 90th percentile"
        );
    }
}
