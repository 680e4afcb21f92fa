//! The model's view of sound: windows of 48 time frames × 64 log-mel bands.
//!
//! One window covers 15,688 samples (0.98 s at 16 kHz), so a one-second frame from a gateway
//! holds exactly one window and a ten-second clip about nineteen at a 0.5 s hop:
//!
//! | parameter | value | why |
//! |---|---|---|
//! | sample rate | 16 kHz | the rate of the MIMII / DCASE recordings; machine faults live below 8 kHz |
//! | n_fft / window | 1024 samples (64 ms), periodic Hann | 15.6 Hz bins resolve the low harmonics of fans and pumps |
//! | hop | 312 samples (19.5 ms) | 48 frames fit in one second |
//! | mel bands | 64, 0–8000 Hz, Slaney scale and area normalisation | librosa's defaults, so a reference exists |
//! | values | 10·log10(max(power, 1e-10)) dB | silence is −100 dB, never −inf |
//!
//! [`MelSpectrogram`] computes windows; [`Normalisation`] holds the per-band statistics stored
//! with a model; [`bands`] says which frequencies each band covers, for explanations.

mod mel;

use realfft::{RealFftPlanner, RealToComplex, num_complex::Complex32};
use std::sync::Arc;

pub use mel::{BandRange, bands, hz_to_mel, mel_to_hz};

/// Time frames per window (the CNN's input height).
pub const FRAMES: usize = 48;
/// Mel bands per frame (the CNN's input width).
pub const BANDS: usize = 64;
/// Values in one window.
pub const WINDOW_VALUES: usize = FRAMES * BANDS;

/// How windows are computed; stored with every model so scoring matches training.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SpectrogramConfig {
    pub sample_rate: u32,
    pub n_fft: usize,
    pub hop: usize,
    pub f_min_hz: f32,
    pub f_max_hz: f32,
}

impl Default for SpectrogramConfig {
    fn default() -> Self {
        Self {
            sample_rate: 16_000,
            n_fft: 1024,
            hop: 312,
            f_min_hz: 0.0,
            f_max_hz: 8_000.0,
        }
    }
}

impl SpectrogramConfig {
    /// Samples one window spans.
    pub fn window_samples(&self) -> usize {
        (FRAMES - 1) * self.hop + self.n_fft
    }

    /// Start offsets of the windows cut from `len` samples every `hop` samples. A clip shorter than
    /// one window yields none.
    pub fn window_offsets(&self, len: usize, hop: usize) -> impl Iterator<Item = usize> + use<> {
        let span = self.window_samples();
        let count = if len < span {
            0
        } else {
            (len - span) / hop.max(1) + 1
        };
        let hop = hop.max(1);
        (0..count).map(move |i| i * hop)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("{got} samples is shorter than one window ({needed})")]
    TooShort { got: usize, needed: usize },
    #[error("invalid spectrogram configuration: {0}")]
    Config(String),
}

/// Computes log-mel windows. Build one per thread and reuse it: it owns the FFT plan and scratch
/// buffers, so a window costs no allocation.
pub struct MelSpectrogram {
    config: SpectrogramConfig,
    fft: Arc<dyn RealToComplex<f32>>,
    hann: Vec<f32>,
    filters: Vec<mel::Filter>,
    frame: Vec<f32>,
    spectrum: Vec<Complex32>,
    scratch: Vec<Complex32>,
    power: Vec<f32>,
}

impl std::fmt::Debug for MelSpectrogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MelSpectrogram")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl MelSpectrogram {
    pub fn new(config: SpectrogramConfig) -> Result<Self, SignalError> {
        if config.n_fft < 64 || config.n_fft > 16_384 || config.hop == 0 {
            return Err(SignalError::Config(format!(
                "n_fft {} must be 64..=16384 and hop {} positive",
                config.n_fft, config.hop
            )));
        }
        let nyquist = config.sample_rate as f32 / 2.0;
        if !(0.0 <= config.f_min_hz
            && config.f_min_hz < config.f_max_hz
            && config.f_max_hz <= nyquist)
        {
            return Err(SignalError::Config(format!(
                "mel range {}–{} Hz must lie within 0–{nyquist} Hz",
                config.f_min_hz, config.f_max_hz
            )));
        }
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(config.n_fft);
        let n = config.n_fft;
        // Periodic Hann, as librosa and scipy use for spectral analysis.
        let hann = (0..n)
            .map(|i| 0.5 - 0.5 * (std::f32::consts::TAU * i as f32 / n as f32).cos())
            .collect();
        Ok(Self {
            filters: mel::filters(&config, BANDS),
            spectrum: fft.make_output_vec(),
            scratch: fft.make_scratch_vec(),
            frame: fft.make_input_vec(),
            power: vec![0.0; n / 2 + 1],
            hann,
            fft,
            config,
        })
    }

    pub fn config(&self) -> &SpectrogramConfig {
        &self.config
    }

    /// Fills `out` (48 × 64, time-major) with the log-mel window starting at `samples[0]`.
    pub fn window_into(&mut self, samples: &[f32], out: &mut [f32]) -> Result<(), SignalError> {
        let needed = self.config.window_samples();
        if samples.len() < needed {
            return Err(SignalError::TooShort {
                got: samples.len(),
                needed,
            });
        }
        assert_eq!(out.len(), WINDOW_VALUES, "output must hold one window");
        for (t, row) in out.chunks_exact_mut(BANDS).enumerate() {
            let start = t * self.config.hop;
            let input = &samples[start..start + self.config.n_fft];
            for ((slot, &x), &w) in self.frame.iter_mut().zip(input).zip(&self.hann) {
                // A non-finite sample would poison every band; treat it as silence.
                *slot = if x.is_finite() { x * w } else { 0.0 };
            }
            self.fft
                .process_with_scratch(&mut self.frame, &mut self.spectrum, &mut self.scratch)
                .map_err(|e| SignalError::Config(e.to_string()))?;
            for (p, c) in self.power.iter_mut().zip(&self.spectrum) {
                *p = c.norm_sqr();
            }
            for (value, filter) in row.iter_mut().zip(&self.filters) {
                let energy: f32 = filter
                    .weights
                    .iter()
                    .zip(&self.power[filter.first_bin..])
                    .map(|(w, p)| w * p)
                    .sum();
                *value = 10.0 * energy.max(1e-10).log10();
            }
        }
        Ok(())
    }

    /// One window starting at `samples[0]`.
    pub fn window(&mut self, samples: &[f32]) -> Result<Vec<f32>, SignalError> {
        let mut out = vec![0.0; WINDOW_VALUES];
        self.window_into(samples, &mut out)?;
        Ok(out)
    }

    /// All windows of a clip, `hop` samples apart, concatenated.
    pub fn windows(&mut self, samples: &[f32], hop: usize) -> Vec<f32> {
        let offsets: Vec<usize> = self.config.window_offsets(samples.len(), hop).collect();
        let mut out = vec![0.0; offsets.len() * WINDOW_VALUES];
        for (offset, slot) in offsets.iter().zip(out.chunks_exact_mut(WINDOW_VALUES)) {
            // The offsets leave room for a whole window, so this cannot be short.
            let _ = self.window_into(&samples[*offset..], slot);
        }
        out
    }
}

/// The mean log-mel energy of each band over a window's frames, in dB: the cheap features the
/// per-band detector and the explanations work on.
pub fn band_means(window: &[f32]) -> [f32; BANDS] {
    let mut means = [0.0_f32; BANDS];
    for row in window.chunks_exact(BANDS) {
        for (mean, value) in means.iter_mut().zip(row) {
            *mean += value;
        }
    }
    let frames = (window.len() / BANDS).max(1) as f32;
    means.iter_mut().for_each(|m| *m /= frames);
    means
}

/// The loudest frame of each band within a window, in dB: transients such as a valve closing show
/// in the peaks long before they move the means.
pub fn band_peaks(window: &[f32]) -> [f32; BANDS] {
    let mut peaks = [f32::NEG_INFINITY; BANDS];
    for row in window.chunks_exact(BANDS) {
        for (peak, value) in peaks.iter_mut().zip(row) {
            *peak = peak.max(*value);
        }
    }
    if window.len() < BANDS {
        peaks = [-100.0; BANDS];
    }
    peaks
}

/// Shifts each whole window (48 × 64 values, concatenated) so that its mean is 0 dB: a uniform gain
/// change — another microphone, another preamp setting, a gateway's automatic gain — moves every
/// value of a log-mel window by the same number of decibels, so after this shift it changes
/// nothing. What remains is the shape of the sound: which bands and which moments are loud
/// relative to the rest. A trailing partial window is left as it is.
pub fn relative_level(windows: &mut [f32]) {
    for window in windows.chunks_exact_mut(WINDOW_VALUES) {
        let mean = window.iter().map(|&v| f64::from(v)).sum::<f64>() / WINDOW_VALUES as f64;
        let mean = mean as f32;
        window.iter_mut().for_each(|v| *v -= mean);
    }
}

/// Per-band mean and standard deviation of training windows; the network sees
/// `(value − mean) / std`, which keeps a quiet machine and a loud one on the same scale.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normalisation {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalisation {
    /// Statistics over `windows` (concatenated 48 × 64 windows).
    pub fn fit(windows: &[f32]) -> Self {
        let mut sum = vec![0.0_f64; BANDS];
        let mut sum_sq = vec![0.0_f64; BANDS];
        let rows = (windows.len() / BANDS).max(1) as f64;
        for row in windows.chunks_exact(BANDS) {
            for (band, &value) in row.iter().enumerate() {
                sum[band] += f64::from(value);
                sum_sq[band] += f64::from(value) * f64::from(value);
            }
        }
        let mean: Vec<f32> = sum.iter().map(|s| (s / rows) as f32).collect();
        let std = sum_sq
            .iter()
            .zip(&sum)
            .map(|(sq, s)| {
                let variance = sq / rows - (s / rows).powi(2);
                (variance.max(0.0).sqrt() as f32).max(1e-3)
            })
            .collect();
        Self { mean, std }
    }

    /// Normalises concatenated windows in place.
    pub fn apply(&self, windows: &mut [f32]) {
        for row in windows.chunks_exact_mut(BANDS) {
            for ((value, mean), std) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *value = (*value - mean) / std;
            }
        }
    }
}
