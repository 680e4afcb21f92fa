//! The statistics a machine's normal sound leaves behind, and distances from them.
//!
//! [`Gaussian`] is a multivariate normal over CNN embeddings with a Ledoit–Wolf shrunk covariance:
//! a few hundred windows cannot pin down a full covariance of a 128-dimensional embedding, and
//! shrinking towards a scaled identity keeps its inverse well conditioned. [`BandGaussian`] is the
//! classic independent-features model over the mean energy of each mel band.

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
        let mut mean = vec![0.0_f64; dim];
        for row in samples.chunks_exact(dim) {
            for (m, &x) in mean.iter_mut().zip(row) {
                *m += f64::from(x);
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let centred: Vec<f64> = samples
            .chunks_exact(dim)
            .flat_map(|row| row.iter().zip(&mean).map(|(&x, m)| f64::from(x) - m))
            .collect();
        let mut cov = vec![0.0_f64; dim * dim];
        for row in centred.chunks_exact(dim) {
            for i in 0..dim {
                let ri = row[i];
                let line = &mut cov[i * dim..(i + 1) * dim];
                for (c, &rj) in line.iter_mut().zip(row) {
                    *c += ri * rj;
                }
            }
        }
        cov.iter_mut().for_each(|c| *c /= n as f64);

        // Ledoit & Wolf (2004): shrink towards mu·I by the intensity that minimises expected loss.
        let mu = (0..dim).map(|i| cov[i * dim + i]).sum::<f64>() / dim as f64;
        let delta = (0..dim * dim)
            .map(|k| {
                let target = if k / dim == k % dim { mu } else { 0.0 };
                (cov[k] - target).powi(2)
            })
            .sum::<f64>();
        let cov_norm = cov.iter().map(|c| c * c).sum::<f64>();
        let mut beta = 0.0;
        for row in centred.chunks_exact(dim) {
            let norm2: f64 = row.iter().map(|x| x * x).sum();
            let mut quad = 0.0;
            for i in 0..dim {
                let line = &cov[i * dim..(i + 1) * dim];
                quad += row[i] * line.iter().zip(row).map(|(c, x)| c * x).sum::<f64>();
            }
            beta += norm2 * norm2 - 2.0 * quad + cov_norm;
        }
        beta /= (n * n) as f64;
        let shrinkage = if delta > 0.0 {
            (beta.min(delta) / delta).clamp(0.0, 1.0)
        } else {
            1.0
        };
        let floor = mu.max(1e-9) * 1e-6;
        for i in 0..dim {
            for j in 0..dim {
                let k = i * dim + j;
                cov[k] *= 1.0 - shrinkage;
                if i == j {
                    cov[k] += shrinkage * mu + floor;
                }
            }
        }
        let precision = invert_spd(&cov, dim)
            .ok_or_else(|| FitError("the covariance is not positive definite".into()))?;
        Ok(Self {
            mean: mean.iter().map(|&m| m as f32).collect(),
            precision: precision.iter().map(|&p| p as f32).collect(),
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

/// Inverse of a symmetric positive-definite matrix through its Cholesky factor.
fn invert_spd(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0_f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let sum: f64 = (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum();
            if i == j {
                let d = a[i * n + i] - sum;
                // NaN fails too: `d > 0.0` is false for it.
                if d.is_nan() || d <= 0.0 {
                    return None;
                }
                l[i * n + i] = d.sqrt();
            } else {
                l[i * n + j] = (a[i * n + j] - sum) / l[j * n + j];
            }
        }
    }
    // L⁻¹ by forward substitution, then A⁻¹ = L⁻ᵀ L⁻¹.
    let mut inv_l = vec![0.0_f64; n * n];
    for col in 0..n {
        for i in col..n {
            let rhs = if i == col { 1.0 } else { 0.0 };
            let sum: f64 = (col..i).map(|k| l[i * n + k] * inv_l[k * n + col]).sum();
            inv_l[i * n + col] = (rhs - sum) / l[i * n + i];
        }
    }
    let mut inverse = vec![0.0_f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let value: f64 = (i..n).map(|k| inv_l[k * n + i] * inv_l[k * n + j]).sum();
            inverse[i * n + j] = value;
            inverse[j * n + i] = value;
        }
    }
    Some(inverse)
}

/// Independent Gaussians over per-band mean energies (dB). The score is Σ zᵢ², which orders
/// windows exactly as −log p(x) does, so `p(x) < ε` is `score > threshold`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BandGaussian {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl BandGaussian {
    /// Fits per-band means (each `bands` values, concatenated). The standard deviation has a floor
    /// of 0.5 dB: a band that never moved in a few clips must not turn a whisper into an alarm.
    pub fn fit(samples: &[f32], bands: usize) -> Result<Self, FitError> {
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
        let std = mean
            .iter()
            .zip(&sq)
            .map(|(m, s)| ((s / n - (m / n).powi(2)).max(0.0).sqrt() as f32).max(0.5))
            .collect();
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
        self.z_scores(x).iter().map(|z| f64::from(z * z)).sum()
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
    fn band_scores_grow_with_departure() {
        let samples: Vec<f32> = (0..100)
            .flat_map(|i| [-40.0 + (i % 5) as f32, -60.0])
            .collect();
        let g = BandGaussian::fit(&samples, 2).expect("fit");
        assert_eq!(g.std[1], 0.5, "a constant band gets the floor");
        assert!(g.score(&[-38.0, -60.0]) < g.score(&[-38.0, -55.0]));
        assert!(g.z_scores(&[-38.0, -55.0])[1] > 9.0);
    }
}
