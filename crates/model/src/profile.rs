//! A machine's profile: what its normal sound looks like to the detector, and where the threshold
//! lies. Profiles are fitted from normal windows only (cold start); labelled anomalies, where
//! there are any, only move the threshold.

use crate::calibrate::{self, ThresholdMethod};
use crate::dataset::MachineKey;
use crate::stats::{BandGaussian, FitError, Gaussian};

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
    /// Always present: the explanations compare band energies against it.
    pub bands: BandGaussian,
    /// For one window (a one-second frame).
    pub window_threshold: f64,
    /// For a clip: the mean of its window scores.
    pub clip_threshold: f64,
    pub threshold_method: ThresholdMethod,
    pub normal_windows: usize,
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
}

/// Normal windows of one machine, grouped by clip (cross-fitting needs the grouping).
#[derive(Debug, Clone, Default)]
pub struct NormalWindows {
    /// Per clip: embeddings, concatenated.
    pub embeddings: Vec<Vec<f32>>,
    /// Per clip: band means, concatenated.
    pub band_means: Vec<Vec<f32>>,
}

impl NormalWindows {
    pub fn push_clip(&mut self, embeddings: Vec<f32>, band_means: Vec<f32>) {
        self.embeddings.push(embeddings);
        self.band_means.push(band_means);
    }

    pub fn clips(&self) -> usize {
        self.embeddings.len()
    }

    fn flat(parts: &[Vec<f32>], skip: Option<usize>) -> Vec<f32> {
        parts
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != skip)
            .flat_map(|(_, part)| part.iter().copied())
            .collect()
    }
}

/// Scores of held-out recordings, window by window and clip by clip.
#[derive(Debug, Clone, Default)]
pub struct HeldOutScores {
    pub normal_windows: Vec<f64>,
    pub anomaly_windows: Vec<f64>,
    pub normal_clips: Vec<f64>,
    pub anomaly_clips: Vec<f64>,
}

/// Fits the statistics of a profile; thresholds come from [`calibrate_profile`].
pub fn fit_statistics(
    scope: Scope,
    key: &MachineKey,
    detector: DetectorKind,
    source: ProfileSource,
    normal: &NormalWindows,
    embedding_dim: usize,
) -> Result<MachineProfile, FitError> {
    let bands = BandGaussian::fit(
        &NormalWindows::flat(&normal.band_means, None),
        auscult_signal::BANDS,
    )?;
    let embedding = match detector {
        DetectorKind::Embedding => Some(Gaussian::fit(
            &NormalWindows::flat(&normal.embeddings, None),
            embedding_dim,
        )?),
        DetectorKind::Bands => None,
    };
    let normal_windows =
        normal.band_means.iter().map(|b| b.len()).sum::<usize>() / auscult_signal::BANDS;
    Ok(MachineProfile {
        machine_type: key.machine_type.clone(),
        machine_id: key.machine_id.clone(),
        scope,
        source,
        detector,
        embedding,
        bands,
        window_threshold: f64::INFINITY,
        clip_threshold: f64::INFINITY,
        threshold_method: ThresholdMethod::Gamma {
            shape: 0.0,
            scale: 0.0,
            percentile: 100.0,
        },
        normal_windows,
    })
}

/// Sets a profile's thresholds from held-out scores: maximum F1 when anomalies are among them,
/// otherwise the gamma `percentile` of the normal scores.
pub fn calibrate_profile(
    profile: &mut MachineProfile,
    held_out: &HeldOutScores,
    percentile: f64,
) -> Result<(), FitError> {
    let labelled =
        calibrate::max_f1_threshold(&held_out.normal_clips, &held_out.anomaly_clips).zip(
            calibrate::max_f1_threshold(&held_out.normal_windows, &held_out.anomaly_windows),
        );
    if let Some(((clip, clip_f1), (window, _))) = labelled {
        profile.clip_threshold = clip;
        profile.window_threshold = window;
        profile.threshold_method = ThresholdMethod::MaxF1 { f1: clip_f1 };
        return Ok(());
    }
    let (window, _) = calibrate::gamma_threshold(&held_out.normal_windows, percentile)
        .ok_or_else(|| FitError("too few normal windows to fit a gamma".into()))?;
    let (clip, method) = calibrate::gamma_threshold(&held_out.normal_clips, percentile)
        .or_else(|| calibrate::gamma_threshold(&held_out.normal_windows, percentile))
        .ok_or_else(|| FitError("too few normal clips to fit a gamma".into()))?;
    profile.window_threshold = window;
    profile.clip_threshold = clip;
    profile.threshold_method = method;
    Ok(())
}

/// Fits a profile from normal clips alone, with thresholds from cross-fitted scores: each clip is
/// scored by statistics fitted without it, so the threshold reflects unseen normal sound rather
/// than the clips the statistics already contain. This is how a new machine is enrolled.
pub fn enroll_profile(
    scope: Scope,
    key: &MachineKey,
    detector: DetectorKind,
    normal: &NormalWindows,
    embedding_dim: usize,
    percentile: f64,
) -> Result<MachineProfile, FitError> {
    if normal.clips() < 2 {
        return Err(FitError(format!(
            "{key}: enrolling needs at least two normal recordings, got {}",
            normal.clips()
        )));
    }
    let mut held_out = HeldOutScores::default();
    for left_out in 0..normal.clips() {
        let rest = NormalWindows {
            embeddings: vec![NormalWindows::flat(&normal.embeddings, Some(left_out))],
            band_means: vec![NormalWindows::flat(&normal.band_means, Some(left_out))],
        };
        let partial = fit_statistics(
            scope,
            key,
            detector,
            ProfileSource::Enrolled,
            &rest,
            embedding_dim,
        )?;
        let scores: Vec<f64> = window_pairs(
            &normal.embeddings[left_out],
            &normal.band_means[left_out],
            embedding_dim,
        )
        .map(|(e, b)| partial.score(e, b))
        .collect();
        if scores.is_empty() {
            continue;
        }
        held_out
            .normal_clips
            .push(scores.iter().sum::<f64>() / scores.len() as f64);
        held_out.normal_windows.extend(scores);
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
        .zip(band_means.chunks_exact(auscult_signal::BANDS))
}
