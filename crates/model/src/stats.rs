//! The statistics a machine's normal sound leaves behind, and distances from them.
//!
//! [`Gaussian`] is a multivariate normal over CNN embeddings with a Ledoit–Wolf shrunk covariance:
//! a few hundred windows cannot pin down a full covariance of a 128-dimensional embedding, and
//! shrinking towards a scaled identity keeps its inverse well conditioned. [`BandGaussian`] is the
//! classic independent-features model over the mean energy of each mel band.

use nalgebra::{Cholesky, DMatrix};

/// A multivariate Gaussian, kept as mean and precision (inverse covariance).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Gaussian {
    pub mean: Vec<f32>,
    /// Row-major `dim × dim`.
    pub precision: Vec<f32>,
    /// The Ledoit–Wolf shrinkage intensity that was applied, in [0, 1].
    pub shrinkage: f32,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot fit statistics: {0}")]
pub struct FitError(pub String);

impl Gaussian {
    /// Fits `samples` (each `dim` values, concatenated).
    pub fn fit(samples: &[f32], dim: usize) -> Result<Self, FitError> {
        let n = samples.len() / dim.max(1);
        if dim == 0 || n < 2 {
            return Err(FitError(format!("{n} samples are too few")));
        }
        let x =
            DMatrix::from_row_iterator(n, dim, samples[..n * dim].iter().map(|&v| f64::from(v)));
        let mean = x.row_mean();
        let mut centred = x;
        for mut row in centred.row_iter_mut() {
            row -= &mean;
        }
        let mut cov = centred.transpose() * &centred / n as f64;

        // Ledoit & Wolf (2004): shrink towards mu·I by the intensity that minimises expected loss.
        let mu = cov.trace() / dim as f64;
        let target = DMatrix::<f64>::identity(dim, dim) * mu;
        let delta = (&cov - &target).norm_squared();
        let cov_norm = cov.norm_squared();
        // Σ over samples of ‖x xᵀ − S‖²_F = ‖x‖⁴ − 2 xᵀ S x + ‖S‖²_F.
        let projected = &centred * &cov;
        let beta = centred
            .row_iter()
            .zip(projected.row_iter())
            .map(|(row, p)| {
                let norm2 = row.norm_squared();
                norm2 * norm2 - 2.0 * row.dot(&p) + cov_norm
            })
            .sum::<f64>()
            / (n * n) as f64;
        let shrinkage = if delta > 0.0 {
            (beta.min(delta) / delta).clamp(0.0, 1.0)
        } else {
            1.0
        };
        let floor = mu.max(1e-9) * 1e-6;
        cov *= 1.0 - shrinkage;
        for i in 0..dim {
            cov[(i, i)] += shrinkage * mu + floor;
        }
        // NaN in the covariance fails the factorisation as well.
        let precision = Cholesky::new(cov)
            .ok_or_else(|| FitError("the covariance is not positive definite".into()))?
            .inverse();
        Ok(Self {
            mean: mean.iter().map(|&m| m as f32).collect(),
            precision: precision
                .row_iter()
                .flat_map(|row| row.iter().map(|&p| p as f32).collect::<Vec<_>>())
                .collect(),
            shrinkage: shrinkage as f32,
        })
    }

    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Squared Mahalanobis distance of `x` from the mean.
    pub fn distance_sq(&self, x: &[f32]) -> f64 {
        let dim = self.dim();
        let diff: Vec<f64> = x
            .iter()
            .zip(&self.mean)
            .map(|(a, m)| f64::from(a - m))
            .collect();
        let mut total = 0.0;
        for i in 0..dim {
            let line = &self.precision[i * dim..(i + 1) * dim];
            total += diff[i]
                * line
                    .iter()
                    .zip(&diff)
                    .map(|(p, d)| f64::from(*p) * d)
                    .sum::<f64>();
        }
        total.max(0.0)
    }
}

/// Where a machine's normal embeddings lie, as k-means centres on the unit sphere: a window's score
/// is its cosine distance to the nearest centre. Unlike one Gaussian, the centres follow a normal
/// sound with several modes — a valve in two operating patterns is two clusters, not one blob
/// between them — and a handful of clips of a new pattern add their own centres at once.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Centres {
    pub dim: usize,
    /// `k × dim`, each of unit length.
    pub centres: Vec<f32>,
}

/// Most centres a machine gets: enough for several operating patterns, few enough that scoring a
/// window costs less than the network did.
pub const MAX_CENTRES: usize = 64;

impl Centres {
    /// Clusters `samples` (each `dim` values, concatenated) into at most [`MAX_CENTRES`] centres,
    /// one per four samples at most; k-means++ seeding from `seed`, then Lloyd iterations.
    pub fn fit(samples: &[f32], dim: usize, seed: u64) -> Result<Self, FitError> {
        use rand::{Rng, SeedableRng};
        let n = samples.len() / dim.max(1);
        if dim == 0 || n < 2 {
            return Err(FitError(format!("{n} samples are too few")));
        }
        let points: Vec<Vec<f32>> = samples
            .chunks_exact(dim)
            .map(unit)
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| FitError("an embedding is zero or not finite".into()))?;
        let k = (n / 4).clamp(1, MAX_CENTRES);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut centres: Vec<Vec<f32>> = vec![points[rng.random_range(0..n)].clone()];
        let mut nearest: Vec<f32> = points
            .iter()
            .map(|p| cosine_distance(p, &centres[0]))
            .collect();
        while centres.len() < k {
            let total: f64 = nearest.iter().map(|d| f64::from(d * d)).sum();
            if total <= 0.0 {
                break;
            }
            let mut target = rng.random_range(0.0..total);
            let mut chosen = n - 1;
            for (i, d) in nearest.iter().enumerate() {
                target -= f64::from(d * d);
                if target <= 0.0 {
                    chosen = i;
                    break;
                }
            }
            centres.push(points[chosen].clone());
            let newest = centres.len() - 1;
            for (d, p) in nearest.iter_mut().zip(&points) {
                *d = d.min(cosine_distance(p, &centres[newest]));
            }
        }
        for _ in 0..20 {
            let mut sums = vec![vec![0.0_f32; dim]; centres.len()];
            for p in &points {
                let (c, _) = closest(&centres, p);
                sums[c].iter_mut().zip(p).for_each(|(s, v)| *s += v);
            }
            let mut moved = false;
            for (centre, sum) in centres.iter_mut().zip(sums) {
                // An empty cluster keeps its centre.
                if let Some(next) = unit(&sum) {
                    moved |= cosine_distance(centre, &next) > 1e-6;
                    *centre = next;
                }
            }
            if !moved {
                break;
            }
        }
        Ok(Self {
            dim,
            centres: centres.into_iter().flatten().collect(),
        })
    }

    /// Cosine distance (0 to 2) of `x` to the nearest centre.
    pub fn distance(&self, x: &[f32]) -> f64 {
        let norm = x.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm.is_nan() || norm <= 0.0 {
            return 2.0;
        }
        self.centres
            .chunks_exact(self.dim.max(1))
            .map(|c| 1.0 - c.iter().zip(x).map(|(a, b)| a * b).sum::<f32>() / norm)
            .fold(2.0_f32, f32::min)
            .max(0.0)
            .into()
    }
}

fn unit(v: &[f32]) -> Option<Vec<f32>> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    (norm > 0.0 && norm.is_finite()).then(|| v.iter().map(|x| x / norm).collect())
}

fn cosine_distance(a: &[f32], b: &[f32]) -> f32 {
    1.0 - a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>()
}

fn closest(centres: &[Vec<f32>], p: &[f32]) -> (usize, f32) {
    centres
        .iter()
        .enumerate()
        .map(|(i, c)| (i, cosine_distance(p, c)))
        .fold(
            (0, f32::INFINITY),
            |best, c| if c.1 < best.1 { c } else { best },
        )
}

/// How many samples' worth of evidence a group's typical band spread counts for in each band's
/// spread ([`BandGaussian::fit`]).
pub const POOLED_SPREAD_CLIPS: f64 = 4.0;

/// Independent Gaussians over per-band mean energies (dB). The score is Σ zᵢ², which orders
/// windows exactly as −log p(x) does, so `p(x) < ε` is `score > threshold`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BandGaussian {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl BandGaussian {
    /// Fits per-band means and spreads (each sample `bands` values, concatenated). A band's spread
    /// is drawn towards the typical (median) spread of its group — `group` consecutive bands of one
    /// measure — as if that typical spread had been seen in [`POOLED_SPREAD_CLIPS`] more samples:
    /// from a handful of clips, a band's own spread is mostly luck, and a band that happened to
    /// agree in four clips would call any fifth clip an outlier. With many samples the band's own
    /// spread rules. The standard deviation also has a floor of 0.5 dB: a band that never moved
    /// must not turn a whisper into an alarm.
    pub fn fit(samples: &[f32], bands: usize, group: usize) -> Result<Self, FitError> {
        let n = samples.len() / bands.max(1);
        if bands == 0 || n < 2 {
            return Err(FitError(format!("{n} samples are too few")));
        }
        let mut mean = vec![0.0_f64; bands];
        let mut sq = vec![0.0_f64; bands];
        for row in samples.chunks_exact(bands) {
            for ((m, s), &x) in mean.iter_mut().zip(&mut sq).zip(row) {
                *m += f64::from(x);
                *s += f64::from(x) * f64::from(x);
            }
        }
        let n = n as f64;
        let variance: Vec<f64> = mean
            .iter()
            .zip(&sq)
            .map(|(m, s)| (s / n - (m / n).powi(2)).max(0.0))
            .collect();
        let mut std = Vec::with_capacity(bands);
        for group in variance.chunks(group.clamp(1, bands)) {
            let mut sorted = group.to_vec();
            sorted.sort_by(f64::total_cmp);
            let typical = sorted[sorted.len() / 2];
            std.extend(group.iter().map(|v| {
                let moderated = (n * v + POOLED_SPREAD_CLIPS * typical) / (n + POOLED_SPREAD_CLIPS);
                (moderated.sqrt() as f32).max(0.5)
            }));
        }
        Ok(Self {
            mean: mean.iter().map(|m| (m / n) as f32).collect(),
            std,
        })
    }

    /// Per-band departures in standard deviations.
    pub fn z_scores(&self, x: &[f32]) -> Vec<f32> {
        x.iter()
            .zip(&self.mean)
            .zip(&self.std)
            .map(|((x, m), s)| (x - m) / s)
            .collect()
    }

    pub fn score(&self, x: &[f32]) -> f64 {
        self.group_scores(x, self.mean.len()).iter().sum()
    }

    /// Σ zᵢ² over each run of `group` consecutive bands (the groups of [`Self::fit`]).
    pub fn group_scores(&self, x: &[f32], group: usize) -> Vec<f64> {
        self.z_scores(x)
            .chunks(group.max(1))
            .map(|z| z.iter().map(|z| f64::from(z * z)).sum())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn correlated(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n)
            .flat_map(|_| {
                let a: f32 = rng.random_range(-1.0..1.0);
                let b: f32 = rng.random_range(-1.0..1.0);
                [a + 3.0, a + 0.1 * b - 2.0, b]
            })
            .collect()
    }

    #[test]
    fn mahalanobis_follows_the_correlation_not_the_axes() {
        let g = Gaussian::fit(&correlated(2000, 1), 3).expect("fit");
        assert!((g.mean[0] - 3.0).abs() < 0.05 && (g.mean[1] + 2.0).abs() < 0.05);
        // Moving along the correlation is normal; across it is not, though it is closer in Euclid.
        let along = g.distance_sq(&[3.5, -1.5, 0.0]);
        let across = g.distance_sq(&[3.2, -2.2, 0.0]);
        assert!(across > 4.0 * along, "along {along}, across {across}");
        assert_eq!(g.distance_sq(&g.mean.clone()), 0.0);
    }

    #[test]
    fn few_samples_in_many_dimensions_still_invert() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let dim = 64;
        let samples: Vec<f32> = (0..20 * dim).map(|_| rng.random_range(-1.0..1.0)).collect();
        let g = Gaussian::fit(&samples, dim).expect("fit");
        assert!(g.shrinkage > 0.2, "shrinkage {}", g.shrinkage);
        let d = g.distance_sq(&vec![0.0; dim]);
        assert!(d.is_finite() && d >= 0.0);
        assert!(
            Gaussian::fit(&samples[..dim], dim).is_err(),
            "one sample is not a distribution"
        );
    }

    #[test]
    fn centres_follow_every_mode_of_normal() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        // Two operating patterns: two tight clusters far apart on the sphere.
        let mut samples = Vec::new();
        for i in 0..400 {
            let base = if i % 2 == 0 {
                [1.0, 0.0, 0.0]
            } else {
                [0.0, 1.0, 0.0]
            };
            for b in base {
                samples.push(b + rng.random_range(-0.05..0.05));
            }
        }
        let centres = Centres::fit(&samples, 3, 1).expect("fit");
        assert!(centres.centres.len() / 3 <= MAX_CENTRES);
        let in_each = [
            centres.distance(&[1.0, 0.02, 0.0]),
            centres.distance(&[0.0, 1.0, 0.03]),
        ];
        // Midway between the patterns is no normal sound at all; a Gaussian would call it the mean.
        let between = centres.distance(&[1.0, 1.0, 0.0]);
        let elsewhere = centres.distance(&[0.0, 0.0, 1.0]);
        assert!(in_each.iter().all(|d| *d < 0.01), "{in_each:?}");
        assert!(
            between > 10.0 * in_each[0].max(in_each[1]),
            "between {between}"
        );
        assert!(elsewhere > between, "{elsewhere} vs {between}");
        assert_eq!(centres.distance(&[0.0, 0.0, 0.0]), 2.0);
        assert!(Centres::fit(&samples[..3], 3, 1).is_err());
    }

    #[test]
    fn band_scores_grow_with_departure() {
        let samples: Vec<f32> = (0..100)
            .flat_map(|i| [-40.0 + (i % 5) as f32, -60.0])
            .collect();
        let g = BandGaussian::fit(&samples, 2, 2).expect("fit");
        assert_eq!(g.std[1], 0.5, "a constant band gets the floor");
        assert!(g.score(&[-38.0, -60.0]) < g.score(&[-38.0, -55.0]));
        assert!(g.z_scores(&[-38.0, -55.0])[1] > 9.0);
    }

    #[test]
    fn a_band_that_agreed_by_luck_in_a_few_clips_borrows_its_groups_spread() {
        // Band 0 barely moved (±0.6 dB) while its three neighbours moved ±3 dB; a fifth group of
        // bands, of another measure, moved ±0.1 dB and must not be drawn towards the others.
        let sample = |i: usize, bands: usize| -> Vec<f32> {
            let sign = if i.is_multiple_of(2) { 1.0 } else { -1.0 };
            let mut row = vec![sign * 0.6, sign * 3.0, -sign * 3.0, sign * 3.0];
            row.extend(vec![sign * 0.1; bands - 4]);
            row
        };
        let fit = |clips: usize| {
            let samples: Vec<f32> = (0..clips).flat_map(|i| sample(i, 8)).collect();
            BandGaussian::fit(&samples, 8, 4).expect("fit")
        };
        let few = fit(4);
        assert!(few.std[0] > 1.5, "four clips: {:?}", few.std);
        assert_eq!(
            few.std[4], 0.5,
            "the other group keeps its own spread (and the floor)"
        );
        let many = fit(400);
        assert!((many.std[0] - 0.6).abs() < 0.1, "400 clips: {:?}", many.std);
        assert!((many.std[1] - 3.0).abs() < 0.05);
    }
}
