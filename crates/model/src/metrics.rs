//! How well scores separate normal from anomalous recordings: the DCASE measures.

/// Area under the ROC curve: the chance that a random anomaly scores above a random normal
/// recording (ties count half). `None` when either side is empty.
pub fn auc(normal: &[f64], anomaly: &[f64]) -> Option<f64> {
    partial_auc(normal, anomaly, 1.0)
}

/// The ROC area over false-positive rates `0..=max_fpr`, divided by `max_fpr` — DCASE's pAUC
/// (with `max_fpr` 0.1): how well the detector ranks anomalies when it may raise few false alarms.
pub fn partial_auc(normal: &[f64], anomaly: &[f64], max_fpr: f64) -> Option<f64> {
    if normal.is_empty() || anomaly.is_empty() || !(0.0 < max_fpr && max_fpr <= 1.0) {
        return None;
    }
    // Walk the thresholds from high to low; the ROC curve steps up on anomalies and right on
    // normals (diagonally across ties).
    let mut all: Vec<(f64, bool)> = normal
        .iter()
        .map(|&s| (s, false))
        .chain(anomaly.iter().map(|&s| (s, true)))
        .collect();
    all.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (n_neg, n_pos) = (normal.len() as f64, anomaly.len() as f64);
    let (mut fpr, mut tpr, mut area) = (0.0_f64, 0.0_f64, 0.0_f64);
    let mut i = 0;
    while i < all.len() && fpr < max_fpr {
        let mut j = i;
        let (mut neg, mut pos) = (0.0, 0.0);
        while j < all.len() && all[j].0 == all[i].0 {
            if all[j].1 {
                pos += 1.0;
            } else {
                neg += 1.0;
            }
            j += 1;
        }
        let (next_fpr, next_tpr) = (fpr + neg / n_neg, tpr + pos / n_pos);
        // Clip the last segment at max_fpr, interpolating along it.
        let (end_fpr, end_tpr) = if next_fpr > max_fpr {
            let t = (max_fpr - fpr) / (next_fpr - fpr);
            (max_fpr, tpr + t * (next_tpr - tpr))
        } else {
            (next_fpr, next_tpr)
        };
        area += (end_fpr - fpr) * (tpr + end_tpr) / 2.0;
        (fpr, tpr) = (end_fpr, end_tpr);
        if next_fpr <= max_fpr {
            tpr = next_tpr;
        }
        i = j;
    }
    if fpr < max_fpr {
        area += (max_fpr - fpr) * tpr;
    }
    Some(area / max_fpr)
}

/// Precision, recall and F1 of the verdicts `score > threshold`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Detection {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

pub fn detection(normal: &[f64], anomaly: &[f64], threshold: f64) -> Detection {
    let true_pos = anomaly.iter().filter(|&&s| s > threshold).count();
    let false_pos = normal.iter().filter(|&&s| s > threshold).count();
    detection_from_counts(true_pos, false_pos, anomaly.len())
}

/// Precision, recall and F1 from the anomalies flagged (`true_pos`), the normal recordings flagged
/// (`false_pos`) and the number of anomalies.
pub fn detection_from_counts(true_pos: usize, false_pos: usize, anomalies: usize) -> Detection {
    let (true_pos, false_pos) = (true_pos as f64, false_pos as f64);
    let precision = if true_pos + false_pos > 0.0 {
        true_pos / (true_pos + false_pos)
    } else {
        0.0
    };
    let recall = if anomalies == 0 {
        0.0
    } else {
        true_pos / anomalies as f64
    };
    let f1 = if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    };
    Detection {
        precision,
        recall,
        f1,
    }
}

/// The headline figures of one machine type, as a model file records them for its validation
/// recordings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TypeFigures {
    pub machine_type: String,
    pub n_normal: usize,
    pub n_anomaly: usize,
    pub auc: Option<f64>,
    pub pauc: Option<f64>,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

/// A figure with its bootstrap 95 % interval over clips.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Interval {
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

/// Bootstrap resamples behind every [`Interval`].
pub const BOOTSTRAP_RESAMPLES: usize = 2_000;

/// `figure` (a value in [0, 1]) on the scores, with the 2.5th and 97.5th percentiles of `figure`
/// over resamples that draw normal and anomalous clips with replacement, each side keeping its size
/// (a stratified bootstrap: every resample has both kinds). Deterministic for a given `seed`. With
/// a single clip on either side the interval is all of [0, 1].
pub fn bootstrap(
    normal: &[f64],
    anomaly: &[f64],
    figure: impl Fn(&[f64], &[f64]) -> Option<f64>,
    seed: u64,
) -> Option<Interval> {
    use rand::{Rng, SeedableRng};
    let value = figure(normal, anomaly)?;
    if normal.len() < 2 || anomaly.len() < 2 {
        // One clip on a side resamples to itself: the interval would look certain and say
        // nothing. Every figure here lies in [0, 1]; that is all one clip can tell.
        return Some(Interval {
            value,
            low: 0.0,
            high: 1.0,
        });
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut draws = Vec::with_capacity(BOOTSTRAP_RESAMPLES);
    let (mut n, mut a) = (vec![0.0; normal.len()], vec![0.0; anomaly.len()]);
    for _ in 0..BOOTSTRAP_RESAMPLES {
        for v in n.iter_mut() {
            *v = normal[rng.random_range(0..normal.len())];
        }
        for v in a.iter_mut() {
            *v = anomaly[rng.random_range(0..anomaly.len())];
        }
        if let Some(f) = figure(&n, &a) {
            draws.push(f);
        }
    }
    draws.sort_by(f64::total_cmp);
    let at = |q: f64| draws[((draws.len() - 1) as f64 * q).round() as usize];
    (!draws.is_empty()).then(|| Interval {
        value,
        low: at(0.025),
        high: at(0.975),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_reversed_and_tied_rankings() {
        assert_eq!(auc(&[1.0, 2.0], &[3.0, 4.0]), Some(1.0));
        assert_eq!(auc(&[3.0, 4.0], &[1.0, 2.0]), Some(0.0));
        assert_eq!(auc(&[1.0, 1.0], &[1.0, 1.0]), Some(0.5));
        assert_eq!(auc(&[], &[1.0]), None);
    }

    #[test]
    fn auc_is_the_mann_whitney_statistic() {
        let normal = [0.1, 0.4, 0.35, 0.8, 0.5, 0.5];
        let anomaly = [0.9, 0.5, 0.3, 0.7];
        let mut wins = 0.0;
        for a in anomaly {
            for n in normal {
                wins += if a > n {
                    1.0
                } else if a == n {
                    0.5
                } else {
                    0.0
                };
            }
        }
        let expected = wins / (normal.len() * anomaly.len()) as f64;
        let got = auc(&normal, &anomaly).expect("auc");
        assert!((got - expected).abs() < 1e-12, "{got} vs {expected}");
    }

    #[test]
    fn partial_auc_covers_only_low_false_positive_rates() {
        // Ten normals; the top anomaly beats all of them, the other beats none.
        let normal: Vec<f64> = (0..10).map(f64::from).collect();
        let anomaly = [100.0, -1.0];
        // Up to FPR 0.1 the TPR is 0.5 throughout.
        let p = partial_auc(&normal, &anomaly, 0.1).expect("pauc");
        assert!((p - 0.5).abs() < 1e-12, "{p}");
        assert_eq!(partial_auc(&normal, &[100.0], 0.1), Some(1.0));
        assert_eq!(partial_auc(&normal, &[-5.0], 0.1), Some(0.0));
    }

    #[test]
    fn bootstrap_intervals_hold_the_figure_and_narrow_with_more_clips() {
        let auc_of = |n: &[f64], a: &[f64]| auc(n, a);
        let small_normal: Vec<f64> = (0..8).map(f64::from).collect();
        let small_anomaly: Vec<f64> = (4..12).map(f64::from).collect();
        let small = bootstrap(&small_normal, &small_anomaly, auc_of, 1).expect("interval");
        assert!(
            small.low <= small.value && small.value <= small.high,
            "{small:?}"
        );
        assert!(
            small.high - small.low > 0.1,
            "8 + 8 clips cannot pin an AUC: {small:?}"
        );
        let big_normal: Vec<f64> = (0..800).map(|i| f64::from(i % 8)).collect();
        let big_anomaly: Vec<f64> = (0..800).map(|i| f64::from(4 + i % 8)).collect();
        let big = bootstrap(&big_normal, &big_anomaly, auc_of, 1).expect("interval");
        assert!(
            (big.value - small.value).abs() < 1e-9,
            "same distribution, same AUC"
        );
        assert!(
            big.high - big.low < (small.high - small.low) / 4.0,
            "{big:?} vs {small:?}"
        );
        assert_eq!(
            bootstrap(&small_normal, &small_anomaly, auc_of, 1),
            Some(small)
        );
        assert_eq!(bootstrap(&[], &small_anomaly, auc_of, 1), None);
        let one = bootstrap(&[0.0], &small_anomaly, auc_of, 1).expect("interval");
        assert_eq!(
            (one.value, one.low, one.high),
            (1.0, 0.0, 1.0),
            "one normal clip"
        );
    }

    #[test]
    fn detection_counts_scores_above_the_threshold() {
        let d = detection(&[0.1, 0.2, 0.9], &[0.8, 0.95, 0.3], 0.5);
        assert!((d.precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((d.recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((d.f1 - 2.0 / 3.0).abs() < 1e-12);
    }
}
