//! The mel filterbank, built the way librosa builds it (Slaney scale, area-normalised
//! triangles) so that a reference implementation exists to check against.

use crate::SpectrogramConfig;

const F_SP: f64 = 200.0 / 3.0;
const MIN_LOG_HZ: f64 = 1000.0;
const MIN_LOG_MEL: f64 = MIN_LOG_HZ / F_SP;

fn log_step() -> f64 {
    6.4_f64.ln() / 27.0
}

/// Slaney's mel scale: linear below 1 kHz, logarithmic above.
pub fn hz_to_mel(hz: f64) -> f64 {
    if hz >= MIN_LOG_HZ {
        MIN_LOG_MEL + (hz / MIN_LOG_HZ).ln() / log_step()
    } else {
        hz / F_SP
    }
}

pub fn mel_to_hz(mel: f64) -> f64 {
    if mel >= MIN_LOG_MEL {
        MIN_LOG_HZ * (log_step() * (mel - MIN_LOG_MEL)).exp()
    } else {
        mel * F_SP
    }
}

/// One triangular filter, stored sparsely: the weights of consecutive FFT bins from `first_bin`.
#[derive(Debug, Clone)]
pub(crate) struct Filter {
    pub first_bin: usize,
    pub weights: Vec<f32>,
}

/// The edge frequencies of `bands + 2` mel points.
fn mel_points(config: &SpectrogramConfig, bands: usize) -> Vec<f64> {
    let (low, high) = (
        hz_to_mel(f64::from(config.f_min_hz)),
        hz_to_mel(f64::from(config.f_max_hz)),
    );
    (0..bands + 2)
        .map(|i| mel_to_hz(low + (high - low) * i as f64 / (bands + 1) as f64))
        .collect()
}

pub(crate) fn filters(config: &SpectrogramConfig, bands: usize) -> Vec<Filter> {
    let points = mel_points(config, bands);
    let bins = config.n_fft / 2 + 1;
    let bin_hz = f64::from(config.sample_rate) / config.n_fft as f64;
    (0..bands)
        .map(|band| {
            let (left, centre, right) = (points[band], points[band + 1], points[band + 2]);
            let norm = 2.0 / (right - left);
            let dense: Vec<f32> = (0..bins)
                .map(|bin| {
                    let hz = bin as f64 * bin_hz;
                    let rising = (hz - left) / (centre - left);
                    let falling = (right - hz) / (right - centre);
                    (rising.min(falling).max(0.0) * norm) as f32
                })
                .collect();
            let first_bin = dense.iter().position(|&w| w > 0.0).unwrap_or(0);
            let last_bin = dense.iter().rposition(|&w| w > 0.0).unwrap_or(first_bin);
            Filter {
                first_bin,
                weights: dense[first_bin..=last_bin].to_vec(),
            }
        })
        .collect()
}

/// The frequencies one mel band listens to: where its triangle starts, peaks and ends.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BandRange {
    pub low_hz: f32,
    pub centre_hz: f32,
    pub high_hz: f32,
}

/// The frequency range of each band under `config`.
pub fn bands(config: &SpectrogramConfig) -> Vec<BandRange> {
    let points = mel_points(config, crate::BANDS);
    points
        .windows(3)
        .map(|p| BandRange {
            low_hz: p[0] as f32,
            centre_hz: p[1] as f32,
            high_hz: p[2] as f32,
        })
        .collect()
}
