//! A machine's profile: what its normal sound looks like to the detector, and where the threshold
//! lies. Profiles are fitted from normal windows only (cold start); labelled anomalies, where
//! there are any, only move the threshold.

use crate::calibrate::{self, ThresholdMethod};
use crate::dataset::MachineKey;
use crate::stats::{BandGaussian, FitError, Gaussian};
use auscult_signal::BANDS;

/// Which statistics score a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectorKind {
    /// Mahalanobis distance of CNN embeddings: for machine types the network was trained on.
    Embedding,
    /// Per-band Gaussian over mel-band energies: for machines of a type the network never heard.
    Bands,
}

/// Where a profile came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProfileSource {
    Trained,
    Enrolled,
}

/// How specific the profile is: one machine, every machine of a type, or every machine.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Machine,
    MachineType,
    Global,
}

/// The pattern a profile applies to; `*` stands for any.
pub const ANY: &str = "*";

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MachineProfile {
    pub machine_type: String,
    pub machine_id: String,
    pub scope: Scope,
    pub source: ProfileSource,
    pub detector: DetectorKind,
    /// Present for [`DetectorKind::Embedding`].
    pub embedding: Option<Gaussian>,
    /// Per-window mean band energies; the explanations compare against it too.
    pub bands: BandGaussian,
    /// Per-clip band profile: each band's mean energy over the clip, then its peak. Some faults
    /// show only over seconds — a valve whose closing click has gone dull is normal in any second
    /// without a click — and the clip's peaks catch them.
    pub clip_bands: Option<BandGaussian>,
    /// Typical (median) clip score of unseen normal recordings, per part of the clip score: the
    /// parts are divided by these before they are added, so each counts in units of "normal".
    pub window_scale: f64,
    pub clip_bands_scale: f64,
    /// Weights of the two parts of the clip score (windows, band profile). Both count alike unless
    /// labelled anomalies showed one of them to rank faults of this machine better on its own.
    pub clip_weights: [f64; 2],
    /// For one window (a one-second frame).
    pub window_threshold: f64,
    /// For a clip: see [`MachineProfile::clip_score`].
    pub clip_threshold: f64,
    pub threshold_method: ThresholdMethod,
    pub normal_windows: usize,
    pub normal_clips: usize,
    /// Clips with fewer windows are judged window by window: their peaks say too little.
    pub min_clip_windows: usize,
}

impl MachineProfile {
    pub fn key(&self) -> MachineKey {
        MachineKey {
            machine_type: self.machine_type.clone(),
            machine_id: self.machine_id.clone(),
        }
    }

    /// The anomaly score of one window from its embedding and band means.
    pub fn score(&self, embedding: &[f32], band_means: &[f32]) -> f64 {
        match (&self.detector, &self.embedding) {
            (DetectorKind::Embedding, Some(gaussian)) => gaussian.distance_sq(embedding),
            _ => self.bands.score(band_means),
        }
    }

    /// A clip's score: its mean window score and its band-profile score, each in units of a
    /// typical normal clip's, added. A normal clip scores about 2.
    pub fn clip_score(&self, window_scores: &[f64], clip_features: &[f32]) -> f64 {
        let mean = window_scores.iter().sum::<f64>() / window_scores.len().max(1) as f64;
        let windows = mean / self.window_scale.max(f64::MIN_POSITIVE);
        match &self.clip_bands {
            Some(clip_bands) => {
                let bands =
                    clip_bands.score(clip_features) / self.clip_bands_scale.max(f64::MIN_POSITIVE);
                self.clip_weights[0] * windows + self.clip_weights[1] * bands
            }
            None => windows,
        }
    }
}

/// A clip's band profile from its windows' band means and peaks: `[mean of means; peak of peaks]`.
pub fn clip_features(band_means: &[f32], band_peaks: &[f32]) -> Vec<f32> {
    let mut features = mean_bands(band_means);
    let mut peaks = vec![-100.0_f32; BANDS];
    for row in band_peaks.chunks_exact(BANDS) {
        for (p, v) in peaks.iter_mut().zip(row) {
            *p = p.max(*v);
        }
    }
    features.extend(peaks);
    features
}

/// The mean over windows of per-window band values (`windows × 64` → 64).
pub fn mean_bands(rows: &[f32]) -> Vec<f32> {
    let windows = (rows.len() / BANDS).max(1) as f32;
    let mut means = vec![0.0_f32; BANDS];
    for row in rows.chunks_exact(BANDS) {
        for (m, v) in means.iter_mut().zip(row) {
            *m += v / windows;
        }
    }
    means
}

/// Normal windows of one machine, grouped by clip (cross-fitting needs the grouping).
#[derive(Debug, Clone, Default)]
pub struct NormalWindows {
    /// Per clip: embeddings, concatenated.
    pub embeddings: Vec<Vec<f32>>,
    /// Per clip: band means, concatenated.
    pub band_means: Vec<Vec<f32>>,
    /// Per clip: band peaks, concatenated.
    pub band_peaks: Vec<Vec<f32>>,
}

impl NormalWindows {
    pub fn push_clip(&mut self, inference: &crate::detector::Inference) {
        self.embeddings.push(inference.embeddings.clone());
        self.band_means.push(inference.band_means.clone());
        self.band_peaks.push(inference.band_peaks.clone());
    }

    pub fn clips(&self) -> usize {
        self.embeddings.len()
    }

    fn without(&self, left_out: usize) -> Self {
        let keep = |parts: &[Vec<f32>]| -> Vec<Vec<f32>> {
            parts
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != left_out)
                .map(|(_, p)| p.clone())
                .collect()
        };
        Self {
            embeddings: keep(&self.embeddings),
            band_means: keep(&self.band_means),
            band_peaks: keep(&self.band_peaks),
        }
    }

    fn clip(&self, index: usize) -> HeldOutInput<'_> {
        HeldOutInput {
            embeddings: &self.embeddings[index],
            band_means: &self.band_means[index],
            band_peaks: &self.band_peaks[index],
        }
    }
}

/// One held-out clip as the network saw it.
#[derive(Debug, Clone, Copy)]
pub struct HeldOutInput<'a> {
    pub embeddings: &'a [f32],
    pub band_means: &'a [f32],
    pub band_peaks: &'a [f32],
}

/// A held-out clip's scores under a profile fitted without it.
#[derive(Debug, Clone)]
pub struct HeldOutClip {
    pub anomaly: bool,
    pub window_scores: Vec<f64>,
    pub clip_features: Vec<f32>,
}

impl HeldOutClip {
    pub fn new(
        profile: &MachineProfile,
        input: HeldOutInput<'_>,
        anomaly: bool,
        embedding_dim: usize,
    ) -> Self {
        Self {
            anomaly,
            window_scores: window_pairs(input.embeddings, input.band_means, embedding_dim)
                .map(|(e, b)| profile.score(e, b))
                .collect(),
            clip_features: clip_features(input.band_means, input.band_peaks),
        }
    }
}

/// Fits the statistics of a profile; scales and thresholds come from [`calibrate_profile`].
pub fn fit_statistics(
    scope: Scope,
    key: &MachineKey,
    detector: DetectorKind,
    source: ProfileSource,
    normal: &NormalWindows,
    embedding_dim: usize,
) -> Result<MachineProfile, FitError> {
    let flat = |parts: &[Vec<f32>]| -> Vec<f32> { parts.iter().flatten().copied().collect() };
    let bands = BandGaussian::fit(&flat(&normal.band_means), BANDS)?;
    let embedding = match detector {
        DetectorKind::Embedding => Some(Gaussian::fit(&flat(&normal.embeddings), embedding_dim)?),
        DetectorKind::Bands => None,
    };
    let clip_profiles: Vec<f32> = normal
        .band_means
        .iter()
        .zip(&normal.band_peaks)
        .flat_map(|(m, p)| clip_features(m, p))
        .collect();
    let clip_bands = BandGaussian::fit(&clip_profiles, 2 * BANDS).ok();
    let windows_per_clip: Vec<usize> = normal.band_means.iter().map(|m| m.len() / BANDS).collect();
    let mut sorted = windows_per_clip.clone();
    sorted.sort_unstable();
    Ok(MachineProfile {
        machine_type: key.machine_type.clone(),
        machine_id: key.machine_id.clone(),
        scope,
        source,
        detector,
        embedding,
        bands,
        clip_bands,
        window_scale: 1.0,
        clip_bands_scale: 1.0,
        clip_weights: [1.0, 1.0],
        window_threshold: f64::INFINITY,
        clip_threshold: f64::INFINITY,
        threshold_method: ThresholdMethod::Gamma {
            shape: 0.0,
            scale: 0.0,
            percentile: 100.0,
        },
        normal_windows: windows_per_clip.iter().sum(),
        normal_clips: normal.clips(),
        min_clip_windows: sorted
            .get(sorted.len() / 2)
            .map_or(2, |median| (median / 2).max(2)),
    })
}

/// Sets a profile's scales and thresholds from held-out clips: maximum F1 when anomalies are among
/// them, otherwise the gamma `percentile` of the normal scores.
pub fn calibrate_profile(
    profile: &mut MachineProfile,
    held_out: &[HeldOutClip],
    percentile: f64,
) -> Result<(), FitError> {
    let normal: Vec<&HeldOutClip> = held_out.iter().filter(|c| !c.anomaly).collect();
    if normal.len() < 2 {
        return Err(FitError(format!(
            "{} held-out normal clips are too few to calibrate",
            normal.len()
        )));
    }
    let median = |mut values: Vec<f64>| -> f64 {
        values.sort_by(f64::total_cmp);
        values
            .get(values.len() / 2)
            .copied()
            .unwrap_or(1.0)
            .max(1e-9)
    };
    profile.window_scale = median(
        normal
            .iter()
            .map(|c| c.window_scores.iter().sum::<f64>() / c.window_scores.len().max(1) as f64)
            .collect(),
    );
    if let Some(clip_bands) = &profile.clip_bands {
        profile.clip_bands_scale = median(
            normal
                .iter()
                .map(|c| clip_bands.score(&c.clip_features))
                .collect(),
        );
    }
    let split = |values: &dyn Fn(&HeldOutClip) -> Vec<f64>| -> (Vec<f64>, Vec<f64>) {
        let (mut n, mut a) = (Vec::new(), Vec::new());
        for clip in held_out {
            if clip.anomaly {
                a.extend(values(clip))
            } else {
                n.extend(values(clip))
            }
        }
        (n, a)
    };
    profile.clip_weights = [1.0, 1.0];
    if profile.clip_bands.is_some() && held_out.iter().any(|c| c.anomaly) {
        // Labelled faults: keep the part(s) of the clip score that rank them best. A part must
        // beat both together by a clear margin to be used alone.
        let auc_with = |weights: [f64; 2]| {
            let mut trial = profile.clone();
            trial.clip_weights = weights;
            let (n, a) = split(&|c| vec![trial.clip_score(&c.window_scores, &c.clip_features)]);
            crate::metrics::auc(&n, &a).unwrap_or(0.5)
        };
        let both = auc_with([1.0, 1.0]);
        let best = [[1.0, 0.0], [0.0, 1.0]]
            .into_iter()
            .map(|w| (auc_with(w), w))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        if let Some((auc, weights)) = best
            && auc > both + 0.02
        {
            profile.clip_weights = weights;
        }
    }
    let (normal_windows, anomaly_windows) = split(&|c| c.window_scores.clone());
    let (normal_clips, anomaly_clips) =
        split(&|c| vec![profile.clip_score(&c.window_scores, &c.clip_features)]);
    let labelled = calibrate::max_f1_threshold(&normal_clips, &anomaly_clips).zip(
        calibrate::max_f1_threshold(&normal_windows, &anomaly_windows),
    );
    if let Some(((clip, clip_f1), (window, _))) = labelled {
        profile.clip_threshold = clip;
        profile.window_threshold = window;
        profile.threshold_method = ThresholdMethod::MaxF1 { f1: clip_f1 };
        return Ok(());
    }
    let (window, _) = calibrate::gamma_threshold(&normal_windows, percentile)
        .ok_or_else(|| FitError("too few normal windows to fit a gamma".into()))?;
    let (clip, method) = calibrate::gamma_threshold(&normal_clips, percentile)
        .ok_or_else(|| FitError("too few normal clips to fit a gamma".into()))?;
    profile.window_threshold = window;
    profile.clip_threshold = clip;
    profile.threshold_method = method;
    Ok(())
}

/// Fits a profile from normal clips alone, calibrated on cross-fitted scores: each clip is scored
/// by statistics fitted without it, so the threshold reflects unseen normal sound rather than the
/// clips the statistics already contain. This is how a new machine is enrolled.
pub fn enroll_profile(
    scope: Scope,
    key: &MachineKey,
    detector: DetectorKind,
    normal: &NormalWindows,
    embedding_dim: usize,
    percentile: f64,
) -> Result<MachineProfile, FitError> {
    if normal.clips() < 3 {
        return Err(FitError(format!(
            "{key}: enrolling needs at least three normal recordings, got {}",
            normal.clips()
        )));
    }
    let mut held_out = Vec::with_capacity(normal.clips());
    for left_out in 0..normal.clips() {
        let partial = fit_statistics(
            scope,
            key,
            detector,
            ProfileSource::Enrolled,
            &normal.without(left_out),
            embedding_dim,
        )?;
        held_out.push(HeldOutClip::new(
            &partial,
            normal.clip(left_out),
            false,
            embedding_dim,
        ));
    }
    let mut profile = fit_statistics(
        scope,
        key,
        detector,
        ProfileSource::Enrolled,
        normal,
        embedding_dim,
    )?;
    calibrate_profile(&mut profile, &held_out, percentile)?;
    Ok(profile)
}

/// Pairs each window's embedding with its band means.
pub fn window_pairs<'a>(
    embeddings: &'a [f32],
    band_means: &'a [f32],
    embedding_dim: usize,
) -> impl Iterator<Item = (&'a [f32], &'a [f32])> {
    embeddings
        .chunks_exact(embedding_dim.max(1))
        .zip(band_means.chunks_exact(BANDS))
}
