//! Thresholds: where a machine's score stops being normal.
//!
//! With labelled anomalies the threshold maximises F1 on held-out recordings; without them a gamma
//! distribution is fitted to held-out normal scores (squared distances are positive and
//! right-skewed, which a gamma describes well) and the threshold is its chosen percentile.

use crate::metrics;

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

/// Maximum-likelihood gamma fit (Minka's Newton iteration on the shape).
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
    let mut shape = (3.0 - s + ((s - 3.0).powi(2) + 24.0 * s).sqrt()) / (12.0 * s);
    for _ in 0..50 {
        let step = (shape.ln() - digamma(shape) - s) / (1.0 / shape - trigamma(shape));
        let next = (shape - step).max(1e-6);
        if (next - shape).abs() < 1e-10 * shape {
            shape = next;
            break;
        }
        shape = next;
    }
    Some((shape, mean / shape))
}

/// The threshold at `percentile` (0–100) of a gamma fitted to `normal` scores.
pub fn gamma_threshold(normal: &[f64], percentile: f64) -> Option<(f64, ThresholdMethod)> {
    let (shape, scale) = fit_gamma(normal)?;
    let threshold = gamma_quantile(shape, scale, percentile / 100.0);
    Some((
        threshold,
        ThresholdMethod::Gamma {
            shape,
            scale,
            percentile,
        },
    ))
}

/// Inverse CDF of the gamma distribution, by bisection on the regularised incomplete gamma.
pub fn gamma_quantile(shape: f64, scale: f64, p: f64) -> f64 {
    let p = p.clamp(1e-12, 1.0 - 1e-12);
    let (mut low, mut high) = (0.0_f64, shape.max(1.0));
    while lower_regularised_gamma(shape, high) < p {
        high *= 2.0;
    }
    for _ in 0..200 {
        let mid = (low + high) / 2.0;
        if lower_regularised_gamma(shape, mid) < p {
            low = mid;
        } else {
            high = mid;
        }
    }
    (low + high) / 2.0 * scale
}

/// P(a, x): series below a+1, continued fraction above (Numerical Recipes' split).
pub fn lower_regularised_gamma(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    let log_prefix = a * x.ln() - x - ln_gamma(a);
    if x < a + 1.0 {
        let (mut term, mut sum, mut n) = (1.0 / a, 1.0 / a, a);
        for _ in 0..1000 {
            n += 1.0;
            term *= x / n;
            sum += term;
            if term.abs() < sum.abs() * 1e-15 {
                break;
            }
        }
        (sum * log_prefix.exp()).clamp(0.0, 1.0)
    } else {
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..1000 {
            let an = -f64::from(i) * (f64::from(i) - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let delta = d * c;
            h *= delta;
            if (delta - 1.0).abs() < 1e-15 {
                break;
            }
        }
        (1.0 - log_prefix.exp() * h).clamp(0.0, 1.0)
    }
}

/// Lanczos approximation (g = 7, n = 9).
pub fn ln_gamma(x: f64) -> f64 {
    const COEFFICIENTS: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = COEFFICIENTS[0];
    for (i, c) in COEFFICIENTS.iter().enumerate().skip(1) {
        sum += c / (x + i as f64);
    }
    let t = x + 7.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

fn digamma(mut x: f64) -> f64 {
    let mut result = 0.0;
    while x < 6.0 {
        result -= 1.0 / x;
        x += 1.0;
    }
    let f = 1.0 / (x * x);
    result + x.ln() - 0.5 / x - f * (1.0 / 12.0 - f * (1.0 / 120.0 - f * (1.0 / 252.0 - f / 240.0)))
}

fn trigamma(mut x: f64) -> f64 {
    let mut result = 0.0;
    while x < 6.0 {
        result += 1.0 / (x * x);
        x += 1.0;
    }
    let f = 1.0 / (x * x);
    result + 1.0 / x + f / 2.0 + f / x * (1.0 / 6.0 - f * (1.0 / 30.0 - f / 42.0))
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
        let q = gamma_quantile(1.0, 2.0, 0.9);
        assert!((q - 2.0 * 10_f64.ln()).abs() < 1e-9, "{q}");
        // Chi-squared with 4 degrees of freedom = gamma(2, 2): 95th percentile 9.4877.
        let q = gamma_quantile(2.0, 2.0, 0.95);
        assert!((q - 9.487_729).abs() < 1e-5, "{q}");
        assert!((ln_gamma(5.0) - 24_f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn gamma_fit_recovers_its_parameters() {
        // Deterministic gamma(3, 2) sample through the inverse CDF on a grid.
        let samples: Vec<f64> = (1..2000)
            .map(|i| gamma_quantile(3.0, 2.0, f64::from(i) / 2000.0))
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
