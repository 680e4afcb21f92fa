//! Fitting a profile: its statistics from normal clips, then each part's normal range from clips
//! the statistics were not fitted on — held-out clips, or each clip left out in turn.

use auscult_signal::BANDS;

use super::normal::HeldOutInput;
use super::{
    CONTOUR_HALF_WIDTH, ClipParts, DetectorKind, FalseAlarmCheck, Fusion, MachineProfile,
    NormalWindows, ProfileSource, Scope, SideRanges, SpectrumForm, clip_profile,
    impulsiveness_part, relative_rows, window_pairs,
};
use crate::calibrate::{self, ThresholdMethod};
use crate::dataset::MachineKey;
use crate::features::{PeakStatistic, TwoSided, Waveform};
use crate::stats::{BandGaussian, Centres, FitError, Gaussian};

/// Normal clips below which a range is uncertain: leaving one out to score it, or holding a few
/// out, leaves too little to say what normal spread is. Training cross-fits a profile whose
/// validation holds fewer (five validation clips moved a held-out pattern's AUC between 0.56 and
/// 0.99 with the seed); `auscult enroll` warns below it.
pub const RELIABLE_RANGE_CLIPS: usize = 10;

/// A held-out clip's scores under a profile fitted without it: every part, not only the
/// embedding's, so that scales and thresholds reflect sound the statistics never contained (a
/// clip inside a band or impulsiveness fit scores lower than an unseen one, by a margin that
/// grows as the clips get fewer).
#[derive(Debug, Clone)]
pub struct HeldOutClip {
    pub anomaly: bool,
    pub window_scores: Vec<f64>,
    /// Its parts as that profile's statistics measure them, before they are put in units of normal.
    pub(super) raw_parts: ClipParts,
    /// Its impulsiveness departure towards duller and towards sharper, under that profile.
    pub(super) impulsiveness_by_side: Option<(f64, f64)>,
}

impl HeldOutClip {
    pub fn new(
        profile: &MachineProfile,
        input: HeldOutInput<'_>,
        anomaly: bool,
        embedding_dim: usize,
    ) -> Self {
        let window_scores: Vec<f64> =
            window_pairs(input.embeddings, input.band_means, embedding_dim)
                .map(|(e, b)| profile.score(e, b))
                .collect();
        let (raw_parts, impulsiveness_by_side) = profile.raw_parts_by_side(
            &window_scores,
            &profile.clip_features(input.band_means, input.band_peaks),
            &input.waveform,
        );
        Self {
            anomaly,
            window_scores,
            raw_parts,
            impulsiveness_by_side,
        }
    }
}

/// The least spread, in dB, an impulse scale is credited with: a scale that barely moved over a
/// few clips must not turn a fraction of a decibel into an alarm (the band profiles' floor, too).
const IMPULSIVENESS_STD_FLOOR_DB: f64 = 0.5;

/// Fits the statistics of a profile; scales and thresholds come from [`calibrate_profile`].
pub fn fit_statistics(
    scope: Scope,
    key: &MachineKey,
    detector: DetectorKind,
    source: ProfileSource,
    normal: &NormalWindows,
    embedding_dim: usize,
    relative_level: bool,
) -> Result<MachineProfile, FitError> {
    let flat = |parts: &[Vec<f32>]| -> Vec<f32> { parts.iter().flatten().copied().collect() };
    let mut window_bands = flat(&normal.band_means);
    if relative_level {
        relative_rows(&mut window_bands);
    }
    let bands = BandGaussian::fit(&window_bands, BANDS, BANDS)?;
    let embedding = match detector {
        DetectorKind::Embedding => Some(Gaussian::fit(&flat(&normal.embeddings), embedding_dim)?),
        DetectorKind::Bands | DetectorKind::Neighbours => None,
    };
    let centres = match detector {
        // Seeded by the amount of sound, so the same clips always give the same centres.
        DetectorKind::Neighbours => Some(Centres::fit(
            &flat(&normal.embeddings),
            embedding_dim,
            normal.embeddings.iter().map(Vec::len).sum::<usize>() as u64,
        )?),
        DetectorKind::Bands | DetectorKind::Embedding => None,
    };
    let spectrum = SpectrumForm::Contour {
        half_width: CONTOUR_HALF_WIDTH,
    };
    let peak_statistic = PeakStatistic::UpperQuartile;
    let clip_profiles: Vec<f32> = normal
        .band_means
        .iter()
        .zip(&normal.band_peaks)
        .flat_map(|(m, p)| clip_profile(m, p, relative_level, spectrum, peak_statistic))
        .collect();
    let clip_bands = BandGaussian::fit(&clip_profiles, 2 * BANDS, BANDS).ok();
    let measured: Vec<_> = normal
        .waveforms
        .iter()
        .filter_map(Waveform::impulsiveness_db)
        .collect();
    // Impulsiveness is judged only where every normal clip had it (older callers measure none).
    let impulsiveness = (measured.len() == normal.clips() && measured.len() >= 2)
        .then(|| {
            (0..crate::features::IMPULSE_SCALES.len())
                .map(|scale| {
                    TwoSided::fit_two_piece(&measured.iter().map(|m| m[scale]).collect::<Vec<_>>())
                        .map(|fit| fit.with_floor(IMPULSIVENESS_STD_FLOOR_DB))
                })
                .collect::<Option<Vec<_>>>()
        })
        .flatten();
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
        centres,
        bands,
        clip_bands,
        fusion: Fusion::Furthest,
        window_scale: 1.0,
        clip_bands_scale: 1.0,
        band_peaks_scale: Some(1.0),
        impulsiveness,
        impulsiveness_scale: 1.0,
        impulsiveness_sides: None,
        legacy_crest: None,
        legacy_crest_scale: 1.0,
        clip_weights: vec![1.0; 4],
        window_threshold: f64::INFINITY,
        clip_threshold: f64::INFINITY,
        threshold_method: ThresholdMethod::Gamma {
            shape: 0.0,
            scale: 0.0,
            percentile: 100.0,
        },
        false_alarm_check: None,
        normal_windows: windows_per_clip.iter().sum(),
        normal_clips: normal.clips(),
        min_clip_windows: sorted
            .get(sorted.len() / 2)
            .map_or(2, |median| (median / 2).max(2)),
        relative_level,
        spectrum,
        peak_statistic,
        kept: None,
        fitted_from: normal.known_sources(),
        machines: Vec::new(),
    })
}

/// Sets a profile's scales and thresholds from held-out clips. Each part's scale is its normal
/// range: the point a gamma fitted to the held-out normal clips' values of that part puts at the
/// target rate, the rate shared among the parts and the impulsiveness's two sides (a clip is
/// flagged when any one is out of range), and [`MachineProfile::false_alarm_check`] says how
/// often unseen healthy clips go beyond them. With anomalies among the clips, the clip threshold
/// is the one of maximum F1 instead, and there is no check.
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
    // A part some held-out normal clip could not be scored on (its statistics had too few clips
    // for it, or the clip had no measure) has no calibration: judging by it would put clips on a
    // scale their threshold never saw.
    let scored = |part: usize| normal.iter().all(|c| c.raw_parts[part].is_some());
    if !(scored(1) && scored(2)) {
        profile.clip_bands = None;
    }
    if !scored(3) {
        profile.impulsiveness = None;
        profile.legacy_crest = None;
    }
    // Every held-out clip, faulty ones too, is judged only by the parts the profile keeps.
    let bands = profile.clip_bands.is_some();
    let kept = [true, bands, bands, profile.impulsiveness.is_some()];
    // The impulsiveness is judged on each side against its own range where every held-out
    // normal clip measured both: two ranges, each a share of the false alarms.
    let sided =
        profile.impulsiveness.is_some() && normal.iter().all(|c| c.impulsiveness_by_side.is_some());
    // Each range may flag its share of the healthy clips, so that together (a union bound) they
    // flag no more than the target — as far as the fitted gammas describe unseen normal sound.
    let ranges = kept.iter().filter(|k| **k).count() + usize::from(sided);
    let part_percentile = 100.0 - (100.0 - percentile) / ranges as f64;
    let fitting = RangeFitting {
        kept,
        sided,
        part_percentile,
    };
    let fitted = fitting.fit(&normal);
    profile.impulsiveness_sides = fitted.sides;
    let parts_of = |clip: &HeldOutClip| fitting.parts_of(clip, fitted.sides);
    profile.fusion = Fusion::Furthest;
    profile.window_scale = fitted.scales[0];
    if bands {
        profile.clip_bands_scale = fitted.scales[1];
        profile.band_peaks_scale = Some(fitted.scales[2]);
    }
    if profile.impulsiveness.is_some() {
        profile.impulsiveness_scale = fitted.scales[3];
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
    profile.clip_weights = vec![1.0; 4];
    if held_out.iter().any(|c| c.anomaly) {
        // Labelled faults: keep the part of the clip score that ranks them best. A part must beat
        // all together by a clear margin to be used alone.
        let auc_with = |weights: Vec<f64>| {
            let mut trial = profile.clone();
            trial.clip_weights = weights;
            let (n, a) = split(&|c| vec![trial.weigh(trial.scale(parts_of(c)))]);
            crate::metrics::auc(&n, &a).unwrap_or(0.5)
        };
        let all = auc_with(vec![1.0; 4]);
        let best = (0..4)
            .filter(|part| kept[*part])
            .map(|alone| {
                let weights: Vec<f64> = (0..4).map(|i| f64::from(u8::from(i == alone))).collect();
                (auc_with(weights.clone()), weights)
            })
            .max_by(|a, b| a.0.total_cmp(&b.0));
        if let Some((auc, weights)) = best
            && auc > all + 0.02
        {
            profile.clip_weights = weights;
        }
    }
    let (normal_windows, anomaly_windows) = split(&|c| c.window_scores.clone());
    let (normal_clips, anomaly_clips) = split(&|c| vec![profile.weigh(profile.scale(parts_of(c)))]);
    let labelled = calibrate::max_f1_threshold(&normal_clips, &anomaly_clips).zip(
        calibrate::max_f1_threshold(&normal_windows, &anomaly_windows),
    );
    if let Some(((clip, clip_f1), (window, _))) = labelled {
        profile.clip_threshold = clip;
        profile.window_threshold = window;
        profile.threshold_method = ThresholdMethod::MaxF1 { f1: clip_f1 };
        // Set by F1 on labelled clips, the threshold targets no false-alarm rate to check.
        profile.false_alarm_check = None;
        return Ok(());
    }
    let (window, _) = calibrate::gamma_threshold(&normal_windows, percentile)
        .ok_or_else(|| FitError("too few normal windows to fit a gamma".into()))?;
    profile.window_threshold = window;
    // Every part is in units of its own range: a clip is out of range when one part is beyond 1.
    profile.clip_threshold = 1.0;
    profile.false_alarm_check = Some(fitting.check(&normal));
    profile.threshold_method = ThresholdMethod::PartRanges {
        percentile,
        part_percentile,
    };
    Ok(())
}

/// How a profile's part ranges are fitted on held-out normal clips: which parts are judged,
/// whether the impulsiveness has a range on each side, and the percentile each range is set at.
struct RangeFitting {
    kept: [bool; 4],
    sided: bool,
    part_percentile: f64,
}

/// Ranges fitted on some held-out normal clips.
struct FittedRanges {
    sides: Option<SideRanges>,
    /// Each part's range ([`ClipParts`] order); 1 for a part the profile does not keep, and for
    /// the impulsiveness when judged by sides, whose ranges already put it in units of normal.
    scales: [f64; 4],
}

impl RangeFitting {
    /// The ranges `normal` reach: the impulsiveness's sides first, since the part they judge is
    /// then in units of them.
    fn fit(&self, normal: &[&HeldOutClip]) -> FittedRanges {
        let sides = self.sided.then(|| {
            let side = |pick: fn((f64, f64)) -> f64| {
                let values: Vec<f64> = normal
                    .iter()
                    .filter_map(|c| c.impulsiveness_by_side.map(pick))
                    .collect();
                normal_range(&values, self.part_percentile)
            };
            SideRanges {
                duller: side(|(duller, _)| duller),
                sharper: side(|(_, sharper)| sharper),
            }
        });
        let scales = [0, 1, 2, 3].map(|part| {
            if !self.kept[part] || (part == 3 && self.sided) {
                return 1.0;
            }
            let values: Vec<f64> = normal
                .iter()
                .filter_map(|c| self.parts_of(c, sides)[part])
                .collect();
            normal_range(&values, self.part_percentile)
        });
        FittedRanges { sides, scales }
    }

    /// A held-out clip's raw parts, the impulsiveness judged by `sides` where there are any, and
    /// only the parts the profile keeps.
    fn parts_of(&self, clip: &HeldOutClip, sides: Option<SideRanges>) -> ClipParts {
        let mut parts = clip.raw_parts;
        if let Some((duller, sharper)) = clip.impulsiveness_by_side {
            parts[3] = Some(impulsiveness_part(sides, duller, sharper));
        }
        for (part, keep) in parts.iter_mut().zip(self.kept) {
            if !keep {
                *part = None;
            }
        }
        parts
    }

    /// Each normal clip judged by ranges fitted on the others alone, as an unseen healthy clip is
    /// judged: how many are out of range. Fitted with them, the ranges are drawn around every
    /// clip they are checked on, and the share flagged could only flatter.
    fn check(&self, normal: &[&HeldOutClip]) -> FalseAlarmCheck {
        let flagged = (0..normal.len())
            .filter(|&left_out| {
                let others: Vec<&HeldOutClip> = normal
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != left_out)
                    .map(|(_, clip)| *clip)
                    .collect();
                let ranges = self.fit(&others);
                self.parts_of(normal[left_out], ranges.sides)
                    .iter()
                    .zip(ranges.scales)
                    .any(|(part, range)| part.is_some_and(|p| p > range))
            })
            .count();
        FalseAlarmCheck {
            flagged,
            clips: normal.len(),
        }
    }
}

/// Where a gamma fitted to held-out normal `values` puts `percentile`; with no spread to fit
/// (fewer than two positive values), the furthest of them.
fn normal_range(values: &[f64], percentile: f64) -> f64 {
    calibrate::gamma_threshold(values, percentile)
        .map(|(range, _)| range)
        .unwrap_or_else(|| values.iter().copied().fold(0.0, f64::max))
        .max(1e-9)
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
    relative_level: bool,
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
            relative_level,
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
        relative_level,
    )?;
    calibrate_profile(&mut profile, &held_out, percentile)?;
    if scope == Scope::Machine {
        profile.kept = Some(normal.keep());
    }
    Ok(profile)
}
