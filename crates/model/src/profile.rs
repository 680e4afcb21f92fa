//! A machine's profile: what its normal sound looks like to the detector, and where the threshold
//! lies. Profiles are fitted from normal windows only (cold start); labelled anomalies, where
//! there are any, only move the threshold.
//!
//! This module says what a profile holds and how it scores a clip; `normal` holds the normal clips
//! a profile is fitted from, and `fitting` fits its statistics and calibrates its ranges.

mod fitting;
mod normal;
#[cfg(test)]
mod tests;

pub use fitting::{
    HeldOutClip, RELIABLE_RANGE_CLIPS, calibrate_profile, enroll_profile, fit_statistics,
};
pub use normal::{HeldOutInput, NormalWindows};

use crate::calibrate::ThresholdMethod;
use crate::dataset::MachineKey;
use crate::features::{PeakStatistic, TwoSided, Waveform, clip_features};
use crate::kept::KeptRecordings;
use crate::stats::{BandGaussian, Centres, Gaussian};
use auscult_signal::BANDS;

/// Which statistics score a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectorKind {
    /// Mahalanobis distance of CNN embeddings: for machine types the network was trained on.
    Embedding,
    /// Per-band Gaussian over mel-band energies: for machines of a type the network never heard.
    Bands,
    /// Cosine distance of CNN embeddings to the nearest of the machine's normal centres: for
    /// machines of types the network was trained on (see [`Centres`]).
    Neighbours,
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

fn one() -> f64 {
    1.0
}

/// How the parts of a clip's score make one score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fusion {
    /// Each part in units of a typical normal clip's (the median of held-out normal clips),
    /// weighted and added. Profiles written before [`Fusion::Furthest`] are read as this, so a
    /// model file keeps the verdicts it was calibrated for.
    #[default]
    Sum,
    /// Each part in units of its own normal range — how far held-out normal clips reach at the
    /// target false-alarm rate, shared among the parts — and the furthest of them counts. Added
    /// up, a part that varies a lot between healthy clips (band peaks in a hall with knocks in it)
    /// raises the one threshold for every part; judged each against its own range, a steady part's
    /// departure (a hum moved by 10–15 dB) is weighed against that part's own spread only.
    Furthest,
}

/// How a clip's band spectrum is compared with its normal one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(tag = "form", rename_all = "snake_case")]
pub enum SpectrumForm {
    /// Each band's mean energy as it is (relative to the clip's level with
    /// [`MachineProfile::relative_level`]). Profiles written before [`SpectrumForm::Contour`]
    /// are read as this, so a model file keeps the verdicts it was calibrated for.
    #[default]
    Level,
    /// Each band's mean energy above its envelope, the straight line fitted through the bands
    /// within `half_width` of it (at the edges, through the bands there are): the spectrum's
    /// contour, its tones and notches, without the smooth envelope that a microphone's response,
    /// its distance from the machine and the hall's broadband noise change. A fault that moves a
    /// hum or adds a whine shows in the contour. One of the fan's healthy recordings sits up to
    /// 10 dB higher over the top bands than the others (broadband noise from the hall): by level it
    /// is as far out as the faulty fans, by contour it is not.
    Contour { half_width: usize },
}

/// The half width, in mel bands, of the envelope a [`SpectrumForm::Contour`] is taken against:
/// nine bands, about 400 Hz wide at the bottom of the mel scale and 2.5 kHz at the top — wide
/// enough that a tone stands above it, narrow enough to follow a hall's broadband noise.
pub const CONTOUR_HALF_WIDTH: usize = 4;

impl SpectrumForm {
    /// The band means (64 values) in this form, in place.
    fn apply(self, means: &mut [f32]) {
        let Self::Contour { half_width } = self else {
            return;
        };
        if means.is_empty() {
            return;
        }
        let level: Vec<f64> = means.iter().map(|&m| f64::from(m)).collect();
        for (band, mean) in means.iter_mut().enumerate() {
            let first = band.saturating_sub(half_width);
            let last = band.saturating_add(half_width).min(level.len() - 1);
            *mean = (level[band] - local_line(&level[first..=last], band - first)) as f32;
        }
    }
}

/// The least-squares line through `values` (at positions 0, 1, …), evaluated at `at`. In the
/// middle of the spectrum, where the bands lie evenly on both sides, that is their mean; at the
/// edges it follows the envelope's slope instead of bending towards the inner bands.
fn local_line(values: &[f64], at: usize) -> f64 {
    let n = values.len() as f64;
    let centre = (n - 1.0) / 2.0;
    let mean = values.iter().sum::<f64>() / n;
    let (covariance, variance) = values
        .iter()
        .enumerate()
        .fold((0.0, 0.0), |(c, v), (x, y)| {
            let dx = x as f64 - centre;
            (c + dx * (y - mean), v + dx * dx)
        });
    let slope = if variance > 0.0 {
        covariance / variance
    } else {
        0.0
    };
    mean + slope * (at as f64 - centre)
}

/// The parts of a clip's score, in this order: the mean window score (the embedding's, for an
/// embedding profile), the departure of the clip's mean band spectrum, of its band peaks, and of
/// its impulsiveness. A steady fault (a hum that moved) shows in the spectrum; a transient one (a
/// click gone dull, a rattle) in the peaks and the impulsiveness.
pub type ClipParts = [Option<f64>; 4];

/// A clip's parts, each weighted and in units of its normal range (with [`Fusion::Furthest`]:
/// above 1 is out of range), named: what an operator reads to see which of them flagged a clip.
/// `None` where the profile does not judge that part.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct PartScores {
    /// The mean window score: the embedding's, for a network profile.
    pub windows: Option<f64>,
    pub band_spectrum: Option<f64>,
    pub band_peaks: Option<f64>,
    pub impulsiveness: Option<f64>,
    /// Which way the impulsiveness departs from the machine's normal: a click gone dull or a
    /// steadier roar, or a knock or rattle that was not there — out of range, two different
    /// repairs. `None` where the impulsiveness is not judged.
    #[serde(default)]
    pub impulsiveness_side: Option<Side>,
}

impl PartScores {
    /// The parts' names, in [`ClipParts`] order, as `score --json` and the stored verdicts name
    /// them.
    pub const NAMES: [&'static str; 4] =
        ["windows", "band_spectrum", "band_peaks", "impulsiveness"];

    /// The name of the part furthest out of its range — the one that set the clip's score —
    /// as `score --json` and the stored verdicts name it; `None` where no part was judged.
    pub fn furthest(&self) -> Option<&'static str> {
        let parts = [
            self.windows,
            self.band_spectrum,
            self.band_peaks,
            self.impulsiveness,
        ];
        Self::NAMES
            .into_iter()
            .zip(parts)
            .filter_map(|(name, part)| part.filter(|p| !p.is_nan()).map(|p| (name, p)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(name, _)| name)
    }
}

/// Which way a clip's impulsiveness departs from the machine's normal, on balance over the time
/// scales (its signed departures added).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// Less impulsive than normal: its peaks lower against its RMS.
    Duller,
    /// More impulsive than normal: its peaks higher against its RMS.
    Sharper,
}

impl Side {
    /// Every side, in declaration order: the words a stored verdict may hold for it.
    pub const ALL: [Side; 2] = [Side::Duller, Side::Sharper];

    /// As `score --json` and the stored verdicts name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Duller => "duller",
            Self::Sharper => "sharper",
        }
    }
}

/// The normal ranges of a clip's impulsiveness departure (Σz² over the scales) when the clip is, on
/// balance over the scales, duller than the machine's normal, and when it is sharper; each set
/// from the held-out healthy clips that departed to that side. The two sides are different
/// sounds: a healthy clip that caught a knock from the hall departs far towards sharper, and with
/// one range for both, that knock set how far a fan's steadier roar or a valve's duller click must
/// go before it is heard — in the shipped fan, 4.6 times as far. A clip is put on one side as a
/// whole, by the sign of its departures added over the scales, so that an operating pattern
/// whose clicks are sharper at one scale and duller at another is judged as the one sound it is.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SideRanges {
    pub duller: f64,
    pub sharper: f64,
}

/// A profile's false alarms on its own normal clips, each judged by ranges fitted on the others
/// alone ([`MachineProfile::false_alarm_check`]). The ranges target a rate (1 % by default) as far
/// as gammas fitted to a few dozen clips describe unseen sound; this says how far they do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FalseAlarmCheck {
    /// Normal clips out of range.
    pub flagged: usize,
    /// Normal clips checked.
    pub clips: usize,
}

impl FalseAlarmCheck {
    /// The share of the clips flagged.
    pub fn rate(&self) -> f64 {
        self.flagged as f64 / self.clips.max(1) as f64
    }
}

/// The pattern a profile applies to; `*` stands for any.
pub const ANY: &str = "*";

/// The machines a machine-type profile must have been fitted from before it judges a machine of
/// its type that has no profile of its own. One machine's normal sound is not another's: a fan
/// judged against a single other fan's range is as likely to be called faulty for being a
/// different unit as for a fault, and a second unit shows at least some of how units differ.
pub const TYPE_VERDICT_MACHINES: usize = 2;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MachineProfile {
    pub machine_type: String,
    pub machine_id: String,
    pub scope: Scope,
    pub source: ProfileSource,
    pub detector: DetectorKind,
    /// Present for [`DetectorKind::Embedding`].
    pub embedding: Option<Gaussian>,
    /// Present for [`DetectorKind::Neighbours`].
    #[serde(default)]
    pub centres: Option<Centres>,
    /// Per-window mean band energies; the explanations compare against it too.
    pub bands: BandGaussian,
    /// Per-clip band profile: each band's mean energy over the clip (in [`Self::spectrum`]'s form),
    /// then its peak (drawn from the windows' as [`Self::peak_statistic`] says). Some faults show
    /// only over seconds — a valve whose closing click has gone dull is normal in any second
    /// without a click — and the clip's peaks catch them.
    pub clip_bands: Option<BandGaussian>,
    /// How the parts of the clip score are put together; profiles from before [`Fusion::Furthest`]
    /// added them.
    #[serde(default)]
    pub fusion: Fusion,
    /// What each part of the clip score is divided by before the parts are put together, so each
    /// counts in units of "normal": its normal range ([`Fusion::Furthest`]) or the typical
    /// (median) score of unseen normal clips ([`Fusion::Sum`]). The band peaks have their own
    /// only with [`Fusion::Furthest`]; before, the band spectrum and peaks were one part.
    pub window_scale: f64,
    pub clip_bands_scale: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub band_peaks_scale: Option<f64>,
    /// How impulsive normal clips sound at each of [`crate::features::IMPULSE_SCALES`], judged
    /// scale by scale in either direction: faults that change a machine's impacts (a valve's click
    /// gone dull, a knock or a rattle appearing) show in it long before a spectrogram frame of
    /// 64 ms can resolve them. Profiles from before it judge none.
    #[serde(default)]
    pub impulsiveness: Option<Vec<TwoSided>>,
    #[serde(default = "one")]
    pub impulsiveness_scale: f64,
    /// The impulsiveness's normal range on each side of the machine's normal, when each side is
    /// judged against its own: how far held-out healthy clips reach towards a duller sound, and
    /// towards a sharper one. Profiles from before it judged both sides against one range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impulsiveness_sides: Option<SideRanges>,
    /// The crest factor alone, as profiles written before the impulse scales judged it; read so
    /// that a model file from then keeps the verdicts it was calibrated for, never written anew.
    #[serde(default, rename = "crest", skip_serializing_if = "Option::is_none")]
    pub legacy_crest: Option<TwoSided>,
    #[serde(default = "one", rename = "crest_scale")]
    pub legacy_crest_scale: f64,
    /// Weights of the parts of the clip score, in [`ClipParts`] order (three in profiles from
    /// before [`Fusion::Furthest`]: the band spectrum and peaks shared one). All count alike unless
    /// labelled anomalies showed one of them to rank faults of this machine better on its own.
    pub clip_weights: Vec<f64>,
    /// For one window (a one-second frame).
    pub window_threshold: f64,
    /// For a clip: see [`MachineProfile::clip_score`].
    pub clip_threshold: f64,
    pub threshold_method: ThresholdMethod,
    /// How many of the normal clips the ranges were fitted on are out of ranges fitted without
    /// each: the share of unseen healthy clips this profile may be expected to flag, measured
    /// rather than assumed. Present for profiles calibrated without fault labels, since they were
    /// written with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub false_alarm_check: Option<FalseAlarmCheck>,
    pub normal_windows: usize,
    pub normal_clips: usize,
    /// Clips with fewer windows are judged window by window: their peaks say too little.
    pub min_clip_windows: usize,
    /// Band energies are judged relative to the sound's own level — a window's to its mean, a
    /// clip's to the clip's mean — so a microphone's gain moves no score. Profiles from before
    /// this existed judged absolute levels.
    #[serde(default)]
    pub relative_level: bool,
    /// How the clip's band spectrum is judged: by level, or by contour.
    #[serde(default)]
    pub spectrum: SpectrumForm,
    /// How the clip's band peaks are drawn from its windows'.
    #[serde(default, rename = "peaks")]
    pub peak_statistic: PeakStatistic,
    /// The normal recordings a machine's own profile was fitted from, so that enrolling more of
    /// them refits on all ([`crate::kept`]). Machine-type profiles keep none: their machines' own
    /// profiles hold the same clips. Profiles from before it kept none, and enrolling replaces them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept: Option<KeptRecordings>,
    /// Content hashes (SHA-256) of the normal recordings the profile was fitted from, as far as
    /// they are known: a machine type's profile is refitted only on clips that include them all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fitted_from: Vec<String>,
    /// The machines (their ids) whose normal clips a machine-type profile was fitted from. It
    /// judges a machine that has no profile of its own when that machine is one of them, or when
    /// they are at least [`TYPE_VERDICT_MACHINES`]: fitted from one machine, it is that machine's
    /// normal sound, not its type's. Files from before it get the list when they are read
    /// ([`crate::info::ModelInfo::list_type_profile_machines`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub machines: Vec<String>,
}

impl MachineProfile {
    pub fn key(&self) -> MachineKey {
        MachineKey {
            machine_type: self.machine_type.clone(),
            machine_id: self.machine_id.clone(),
        }
    }

    /// Whether this machine-type profile may judge machine `machine_id` of its type, which has no
    /// profile of its own: a machine it was fitted from (one too short of clips for a profile of
    /// its own), or any when it was fitted from [`TYPE_VERDICT_MACHINES`] machines or more.
    pub fn judges_machine(&self, machine_id: &str) -> bool {
        self.judges_any_machine()
            || (self.scope != Scope::Machine && self.machines.iter().any(|m| m == machine_id))
    }

    /// Whether this machine-type profile judges any machine of its type that has no profile of
    /// its own: it was fitted from [`TYPE_VERDICT_MACHINES`] machines or more.
    pub fn judges_any_machine(&self) -> bool {
        self.scope != Scope::Machine && self.machines.len() >= TYPE_VERDICT_MACHINES
    }

    /// One window's band means (or several windows', concatenated) as this profile judges them.
    pub fn window_bands(&self, band_means: &[f32]) -> Vec<f32> {
        let mut rows = band_means.to_vec();
        if self.relative_level {
            relative_rows(&mut rows);
        }
        rows
    }

    /// A clip's band profile ([`clip_features`]) as this profile judges it: relative to the clip's
    /// mean level when the profile is level-invariant, its spectrum in [`Self::spectrum`]'s form.
    pub fn clip_features(&self, band_means: &[f32], band_peaks: &[f32]) -> Vec<f32> {
        clip_profile(
            band_means,
            band_peaks,
            self.relative_level,
            self.spectrum,
            self.peak_statistic,
        )
    }

    /// The anomaly score of one window from its embedding and band means.
    pub fn score(&self, embedding: &[f32], band_means: &[f32]) -> f64 {
        match (&self.detector, &self.embedding, &self.centres) {
            (DetectorKind::Embedding, Some(gaussian), _) => gaussian.distance_sq(embedding),
            (DetectorKind::Neighbours, _, Some(centres)) => centres.distance(embedding),
            _ => self.bands.score(&self.window_bands(band_means)),
        }
    }

    /// A clip's score: its parts ([`Self::clip_parts`]), each in units of normal, weighted and
    /// put together as [`Self::fusion`] says. With [`Fusion::Furthest`] a clip scores above 1 when
    /// one of its parts is beyond that part's normal range.
    pub fn clip_score(
        &self,
        window_scores: &[f64],
        clip_features: &[f32],
        waveform: &Waveform,
    ) -> f64 {
        self.clip_score_parts(window_scores, clip_features, waveform)
            .0
    }

    /// [`Self::clip_score`] and the weighted parts it was put together from.
    pub fn clip_score_parts(
        &self,
        window_scores: &[f64],
        clip_features: &[f32],
        waveform: &Waveform,
    ) -> (f64, PartScores) {
        let (parts, impulsiveness_side) =
            self.clip_parts_and_side(window_scores, clip_features, waveform);
        let weighted = self.weighted(parts);
        let [windows, band_spectrum, band_peaks, impulsiveness] = weighted;
        let parts = PartScores {
            windows,
            band_spectrum,
            band_peaks,
            impulsiveness,
            impulsiveness_side,
        };
        (self.fuse(weighted), parts)
    }

    /// Scaled parts, weighted and put together.
    fn weigh(&self, parts: ClipParts) -> f64 {
        self.fuse(self.weighted(parts))
    }

    fn weighted(&self, parts: ClipParts) -> ClipParts {
        let mut weighted = parts;
        for (part, weight) in weighted.iter_mut().zip(self.weights()) {
            *part = part.map(|p| p * weight);
        }
        weighted
    }

    fn fuse(&self, weighted: ClipParts) -> f64 {
        let present = weighted.into_iter().flatten();
        match self.fusion {
            Fusion::Sum => present.sum(),
            Fusion::Furthest => present.fold(0.0, f64::max),
        }
    }

    /// [`Self::clip_weights`] in [`ClipParts`] order, whichever way the profile stored them. Older
    /// profiles weighed the band spectrum and peaks as one part and may hold fewer weights than
    /// parts (two, before the waveform's part): a part without a weight counted nothing, and
    /// still does.
    fn weights(&self) -> [f64; 4] {
        let stored = |part: usize| self.clip_weights.get(part).copied().unwrap_or(0.0);
        if self.clip_weights.len() >= 4 {
            [0, 1, 2, 3].map(stored)
        } else {
            [stored(0), stored(1), stored(1), stored(2)]
        }
    }

    /// The parts of [`Self::clip_score`] ([`ClipParts`]) before they are weighted, each in units
    /// of normal; `None` where the profile or the sound lacks one.
    pub fn clip_parts(
        &self,
        window_scores: &[f64],
        clip_features: &[f32],
        waveform: &Waveform,
    ) -> ClipParts {
        self.clip_parts_and_side(window_scores, clip_features, waveform)
            .0
    }

    /// [`Self::clip_parts`], and which way the impulsiveness departs where it is judged
    /// (profiles that judged the crest factor alone say no side).
    pub fn clip_parts_and_side(
        &self,
        window_scores: &[f64],
        clip_features: &[f32],
        waveform: &Waveform,
    ) -> (ClipParts, Option<Side>) {
        let (raw, side) = self.raw_parts_and_side(window_scores, clip_features, waveform);
        (self.scale(raw), side)
    }

    /// The parts as this profile's statistics measure them, before they are put in units of
    /// normal: the mean window score, Σz² of the band spectrum, of the band peaks and of the
    /// impulsiveness; with the impulsiveness's side, from one measurement of it.
    fn raw_parts_and_side(
        &self,
        window_scores: &[f64],
        clip_features: &[f32],
        waveform: &Waveform,
    ) -> (ClipParts, Option<Side>) {
        let (impulsiveness, side) = self.impulsiveness_departure(waveform).unzip();
        let [windows, spectrum, peaks] =
            self.raw_parts_of_the_spectra(window_scores, clip_features);
        ([windows, spectrum, peaks, impulsiveness], side.flatten())
    }

    /// The raw parts, and the impulsiveness departure split by side (towards duller, towards
    /// sharper), from one measurement of it: what calibrating a profile needs of each held-out
    /// clip.
    fn raw_parts_by_side(
        &self,
        window_scores: &[f64],
        clip_features: &[f32],
        waveform: &Waveform,
    ) -> (ClipParts, Option<(f64, f64)>) {
        let (impulsiveness, by_side) = match &self.impulsiveness {
            Some(_) => {
                let by_side = self.impulsiveness_by_side(waveform);
                let part =
                    by_side.map(|(duller, sharper)| self.impulsiveness_part(duller, sharper));
                (part, by_side)
            }
            // A legacy crest-factor profile judges no sides.
            None => (
                self.impulsiveness_departure(waveform).map(|(part, _)| part),
                None,
            ),
        };
        let [windows, spectrum, peaks] =
            self.raw_parts_of_the_spectra(window_scores, clip_features);
        ([windows, spectrum, peaks, impulsiveness], by_side)
    }

    /// The raw parts heard in the spectrogram — the mean window score, the band spectrum and
    /// the band peaks — beside the impulsiveness, which the waveform gives.
    fn raw_parts_of_the_spectra(
        &self,
        window_scores: &[f64],
        clip_features: &[f32],
    ) -> [Option<f64>; 3] {
        let mean = window_scores.iter().sum::<f64>() / window_scores.len().max(1) as f64;
        // The clip's features are its band means, then its band peaks (`clip_features`).
        let (spectrum, peaks) = self.clip_bands.as_ref().map_or((None, None), |clip_bands| {
            let groups = clip_bands.group_scores(clip_features, BANDS);
            (groups.first().copied(), groups.get(1).copied())
        });
        [Some(mean), spectrum, peaks]
    }

    /// Raw parts in units of normal.
    fn scale(&self, raw: ClipParts) -> ClipParts {
        let scales = [
            self.window_scale,
            self.clip_bands_scale,
            self.band_peaks_scale.unwrap_or(self.clip_bands_scale),
            self.impulsiveness_scale,
        ];
        let mut scaled = raw;
        for (part, scale) in scaled.iter_mut().zip(scales) {
            *part = part.map(|p| p / scale.max(f64::MIN_POSITIVE));
        }
        scaled
    }

    /// How far the waveform's impulsiveness departs from normal: Σ z² over the scales, in units
    /// of each side's range where the profile has them ([`Self::impulsiveness_sides`], the further
    /// side counts), or both sides added (profiles from before them); with the side it departs
    /// to (none for a profile that judged the crest factor alone). `None` where the profile or
    /// the sound has no impulsiveness.
    fn impulsiveness_departure(&self, waveform: &Waveform) -> Option<(f64, Option<Side>)> {
        let Some(normal) = self.impulsiveness.as_ref() else {
            let legacy = self.legacy_crest?;
            return waveform.crest_db().map(|crest| {
                let part =
                    legacy.score(crest).powi(2) / self.legacy_crest_scale.max(f64::MIN_POSITIVE);
                (part, None)
            });
        };
        let (departure, side) = departure_and_side(normal, waveform)?;
        let (duller, sharper) = on_its_side(departure, side);
        Some((self.impulsiveness_part(duller, sharper), Some(side)))
    }

    /// The impulsiveness part from its departures towards duller and towards sharper.
    fn impulsiveness_part(&self, duller: f64, sharper: f64) -> f64 {
        impulsiveness_part(self.impulsiveness_sides, duller, sharper)
    }

    /// The waveform's impulsiveness departure (Σ z² over the scales) as (towards duller, towards
    /// sharper): all of it on the side the signed departures add up to, none on the other.
    /// `None` where the profile or the sound has no impulsiveness.
    fn impulsiveness_by_side(&self, waveform: &Waveform) -> Option<(f64, f64)> {
        impulsiveness_by_side(self.impulsiveness.as_ref()?, waveform)
    }
}

/// The further side in units of its range, or both sides added where there are no ranges.
fn impulsiveness_part(sides: Option<SideRanges>, duller: f64, sharper: f64) -> f64 {
    match sides {
        Some(ranges) => (duller / ranges.duller.max(f64::MIN_POSITIVE))
            .max(sharper / ranges.sharper.max(f64::MIN_POSITIVE)),
        None => duller + sharper,
    }
}

fn impulsiveness_by_side(normal: &[TwoSided], waveform: &Waveform) -> Option<(f64, f64)> {
    departure_and_side(normal, waveform).map(|(departure, side)| on_its_side(departure, side))
}

/// A departure as (towards duller, towards sharper): all of it on its side, none on the other.
fn on_its_side(departure: f64, side: Side) -> (f64, f64) {
    match side {
        Side::Duller => (departure, 0.0),
        Side::Sharper => (0.0, departure),
    }
}

/// The waveform's impulsiveness departure from `normal` (Σ z² over the scales) and the side it
/// departs to on balance: duller where its signed departures add up to less than nothing.
fn departure_and_side(normal: &[TwoSided], waveform: &Waveform) -> Option<(f64, Side)> {
    let measured = waveform.impulsiveness_db()?;
    (normal.len() == measured.len()).then(|| {
        let (departure, net) =
            normal
                .iter()
                .zip(measured)
                .fold((0.0, 0.0), |(departure, net), (scale, value)| {
                    let z = scale.score(value);
                    let signed = if value < scale.mean { -z } else { z };
                    (departure + z * z, net + signed)
                });
        let side = if net < 0.0 {
            Side::Duller
        } else {
            Side::Sharper
        };
        (departure, side)
    })
}

/// Shifts each window's band means (`windows × 64`) by the window's own level, their mean.
fn relative_rows(rows: &mut [f32]) {
    for row in rows.chunks_exact_mut(BANDS) {
        let level = row.iter().sum::<f32>() / BANDS as f32;
        row.iter_mut().for_each(|v| *v -= level);
    }
}

/// A clip's `[means; peaks]`, the peaks drawn from its windows' as `peak_statistic` says, shifted
/// by the clip's level (the mean of its band means) when `relative`, the means then in the
/// `spectrum` form.
fn clip_profile(
    band_means: &[f32],
    band_peaks: &[f32],
    relative: bool,
    spectrum: SpectrumForm,
    peak_statistic: PeakStatistic,
) -> Vec<f32> {
    let mut features = clip_features(band_means, band_peaks, peak_statistic);
    if relative {
        let level = features[..BANDS].iter().sum::<f32>() / BANDS as f32;
        features.iter_mut().for_each(|v| *v -= level);
    }
    spectrum.apply(&mut features[..BANDS]);
    features
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
