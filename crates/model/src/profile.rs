//! A machine's profile: what its normal sound looks like to the detector, and where the threshold
//! lies. Profiles are fitted from normal windows only (cold start); labelled anomalies, where
//! there are any, only move the threshold.

use crate::calibrate::{self, ThresholdMethod};
use crate::dataset::MachineKey;
use crate::features::{PeakStatistic, TwoSided, Waveform, clip_features};
use crate::kept::{KeptClip, KeptRecordings, MAX_KEPT_WINDOWS};
use crate::stats::{BandGaussian, Centres, FitError, Gaussian};
use auscult_signal::BANDS;

/// Normal clips below which a range is uncertain: leaving one out to score it, or holding a few
/// out, leaves too little to say what normal spread is. Training cross-fits a profile whose
/// validation holds fewer (five validation clips moved a held-out pattern's AUC between 0.56 and
/// 0.99 with the seed); `auscult enroll` warns below it.
pub const RELIABLE_RANGE_CLIPS: usize = 10;

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
}

impl MachineProfile {
    pub fn key(&self) -> MachineKey {
        MachineKey {
            machine_type: self.machine_type.clone(),
            machine_id: self.machine_id.clone(),
        }
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
        let weighted = self.weighted(self.clip_parts(window_scores, clip_features, waveform));
        let [windows, band_spectrum, band_peaks, impulsiveness] = weighted;
        let parts = PartScores {
            windows,
            band_spectrum,
            band_peaks,
            impulsiveness,
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
        self.scale(self.raw_parts(window_scores, clip_features, waveform))
    }

    /// The parts as this profile's statistics measure them, before they are put in units of
    /// normal: the mean window score, Σz² of the band spectrum, of the band peaks and of the
    /// impulsiveness.
    fn raw_parts(
        &self,
        window_scores: &[f64],
        clip_features: &[f32],
        waveform: &Waveform,
    ) -> ClipParts {
        let mean = window_scores.iter().sum::<f64>() / window_scores.len().max(1) as f64;
        // The clip's features are its band means, then its band peaks (`clip_features`).
        let (spectrum, peaks) = self.clip_bands.as_ref().map_or((None, None), |clip_bands| {
            let groups = clip_bands.group_scores(clip_features, BANDS);
            (groups.first().copied(), groups.get(1).copied())
        });
        [
            Some(mean),
            spectrum,
            peaks,
            self.impulsiveness_departure(waveform),
        ]
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

    /// Σ z² over the scales of the waveform's impulsiveness against normal; `None` where the
    /// profile or the sound has none.
    fn impulsiveness_departure(&self, waveform: &Waveform) -> Option<f64> {
        let Some(normal) = self.impulsiveness.as_ref() else {
            let legacy = self.legacy_crest?;
            return waveform.crest_db().map(|crest| {
                legacy.score(crest).powi(2) / self.legacy_crest_scale.max(f64::MIN_POSITIVE)
            });
        };
        let measured = waveform.impulsiveness_db()?;
        (normal.len() == measured.len()).then(|| {
            normal
                .iter()
                .zip(measured)
                .map(|(n, m)| n.score(m).powi(2))
                .sum()
        })
    }
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
    /// Per clip: the waveform.
    pub waveforms: Vec<Waveform>,
    /// Per clip: the SHA-256 of the recording's content (empty where unknown), so that a recording
    /// enrolled twice is counted once.
    pub sources: Vec<String>,
}

impl NormalWindows {
    pub fn push_clip(&mut self, inference: &crate::inference::Inference, source: &str) {
        self.embeddings.push(inference.embeddings.clone());
        self.band_means.push(inference.band_means.clone());
        self.band_peaks.push(inference.band_peaks.clone());
        self.waveforms.push(inference.waveform.clone());
        self.sources.push(source.to_owned());
    }

    pub fn clips(&self) -> usize {
        self.embeddings.len()
    }

    /// The clips as a profile keeps them, at the precision the model file stores them in: the
    /// latest ones, up to [`MAX_KEPT_WINDOWS`] windows in all.
    pub fn keep(&self) -> KeptRecordings {
        let mut first = self.clips();
        let mut windows = 0;
        while first > 0 {
            windows += self.band_means[first - 1].len() / BANDS;
            if windows > MAX_KEPT_WINDOWS {
                break;
            }
            first -= 1;
        }
        let clips = (first..self.clips())
            .map(|i| {
                KeptClip {
                    content_sha256: self.sources.get(i).cloned().unwrap_or_default(),
                    embeddings: self.embeddings[i].clone(),
                    band_means: self.band_means[i].clone(),
                    band_peaks: self.band_peaks[i].clone(),
                    waveform: self.waveforms.get(i).cloned().unwrap_or_default(),
                }
                .as_stored()
            })
            .collect();
        KeptRecordings { clips }
    }

    /// Kept clips back in the shape profiles are fitted from. A clip whose parts do not agree on
    /// its number of windows is refused: joined with the others it would shift every window after it.
    pub fn from_kept(kept: &KeptRecordings, embedding_dim: usize) -> Result<Self, FitError> {
        let mut normal = Self::default();
        for (index, clip) in kept.clips.iter().enumerate() {
            let windows = clip.band_means.len() / BANDS;
            let consistent = windows > 0
                && clip.band_means.len() == windows * BANDS
                && clip.embeddings.len() == windows * embedding_dim
                && (clip.band_peaks.len() == windows * BANDS || clip.band_peaks.len() == BANDS);
            if !consistent {
                return Err(FitError(format!(
                    "kept recording {index} is damaged: {} band means, {} band peaks and {} embedding values do not make whole windows",
                    clip.band_means.len(),
                    clip.band_peaks.len(),
                    clip.embeddings.len()
                )));
            }
            normal.embeddings.push(clip.embeddings.clone());
            normal.band_means.push(clip.band_means.clone());
            normal.band_peaks.push(clip.band_peaks.clone());
            normal.waveforms.push(clip.waveform.clone());
            normal.sources.push(clip.content_sha256.clone());
        }
        Ok(normal)
    }

    /// These clips, then `other`'s.
    pub fn extend(&mut self, other: &Self) {
        self.embeddings.extend(other.embeddings.iter().cloned());
        self.band_means.extend(other.band_means.iter().cloned());
        self.band_peaks.extend(other.band_peaks.iter().cloned());
        self.waveforms.extend(other.waveforms.iter().cloned());
        self.sources.extend(other.sources.iter().cloned());
    }

    /// The clips whose recording is not among `sources` (clips of unknown source are kept).
    pub fn excluding(&self, sources: &std::collections::BTreeSet<String>) -> Self {
        self.select(|i| {
            let source = self.sources.get(i).map_or("", String::as_str);
            source.is_empty() || !sources.contains(source)
        })
    }

    /// The recordings' content hashes, those known.
    pub fn known_sources(&self) -> Vec<String> {
        self.sources
            .iter()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect()
    }

    fn without(&self, left_out: usize) -> Self {
        self.select(|i| i != left_out)
    }

    /// The clips whose index `keep` accepts, in order.
    fn select(&self, keep: impl Fn(usize) -> bool) -> Self {
        fn kept<T: Clone>(parts: &[T], keep: &impl Fn(usize) -> bool) -> Vec<T> {
            parts
                .iter()
                .enumerate()
                .filter(|(i, _)| keep(*i))
                .map(|(_, p)| p.clone())
                .collect()
        }
        Self {
            embeddings: kept(&self.embeddings, &keep),
            band_means: kept(&self.band_means, &keep),
            band_peaks: kept(&self.band_peaks, &keep),
            waveforms: kept(&self.waveforms, &keep),
            sources: kept(&self.sources, &keep),
        }
    }

    fn clip(&self, index: usize) -> HeldOutInput<'_> {
        HeldOutInput {
            embeddings: &self.embeddings[index],
            band_means: &self.band_means[index],
            band_peaks: &self.band_peaks[index],
            waveform: self.waveforms.get(index).cloned().unwrap_or_default(),
        }
    }
}

/// One held-out clip as the network saw it.
#[derive(Debug, Clone)]
pub struct HeldOutInput<'a> {
    pub embeddings: &'a [f32],
    pub band_means: &'a [f32],
    pub band_peaks: &'a [f32],
    pub waveform: Waveform,
}

/// A held-out clip's scores under a profile fitted without it: every part, not only the
/// embedding's, so that scales and thresholds reflect sound the statistics never contained (a
/// clip inside a band or impulsiveness fit scores lower than an unseen one, by a margin that
/// grows as the clips get fewer).
#[derive(Debug, Clone)]
pub struct HeldOutClip {
    pub anomaly: bool,
    pub window_scores: Vec<f64>,
    /// [`MachineProfile::raw_parts`] under that profile.
    raw_parts: ClipParts,
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
        let raw_parts = profile.raw_parts(
            &window_scores,
            &profile.clip_features(input.band_means, input.band_peaks),
            &input.waveform,
        );
        Self {
            anomaly,
            window_scores,
            raw_parts,
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
                    TwoSided::fit(&measured.iter().map(|m| m[scale]).collect::<Vec<_>>())
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

/// Sets a profile's scales and thresholds from held-out clips. Each part's scale is its normal
/// range: the point a gamma fitted to the held-out normal clips' values of that part puts at the
/// target rate, the rate shared among the parts (a clip is flagged when any one is out of range).
/// With anomalies among the clips, the clip threshold is the one of maximum F1 instead.
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
    let parts_of = |clip: &HeldOutClip| -> ClipParts {
        let mut parts = clip.raw_parts;
        for (part, keep) in parts.iter_mut().zip(kept) {
            if !keep {
                *part = None;
            }
        }
        parts
    };
    // Each part may flag its share of the healthy clips, so that together (a union bound) they
    // flag no more than the target — as far as the fitted gammas describe unseen normal sound.
    let part_percentile = 100.0 - (100.0 - percentile) / kept.iter().filter(|k| **k).count() as f64;
    let range = |part: usize| -> f64 {
        let values: Vec<f64> = normal.iter().filter_map(|c| parts_of(c)[part]).collect();
        calibrate::gamma_threshold(&values, part_percentile)
            .map(|(range, _)| range)
            // No spread to fit (fewer than two positive values): the furthest normal clip's.
            .unwrap_or_else(|| values.iter().copied().fold(0.0, f64::max))
            .max(1e-9)
    };
    profile.fusion = Fusion::Furthest;
    profile.window_scale = range(0);
    if bands {
        profile.clip_bands_scale = range(1);
        profile.band_peaks_scale = Some(range(2));
    }
    if profile.impulsiveness.is_some() {
        profile.impulsiveness_scale = range(3);
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
        return Ok(());
    }
    let (window, _) = calibrate::gamma_threshold(&normal_windows, percentile)
        .ok_or_else(|| FitError("too few normal windows to fit a gamma".into()))?;
    profile.window_threshold = window;
    // Every part is in units of its own range: a clip is out of range when one part is beyond 1.
    profile.clip_threshold = 1.0;
    profile.threshold_method = ThresholdMethod::PartRanges {
        percentile,
        part_percentile,
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Six clips of a machine whose clicks vary in sharpness, as the network and the waveform
    /// measure would see them.
    fn normal_clips() -> NormalWindows {
        let mut normal = NormalWindows::default();
        for clip in 0..6_u16 {
            let wobble = f32::from(clip) * 0.1;
            // A slope, and a ripple that differs a little from clip to clip: the spectrum's contour
            // has a spread to fit.
            let spectrum: Vec<f32> = (0..BANDS)
                .map(|band| {
                    let ripple = 0.5 * (band as f32 * 0.7 + f32::from(clip) * 0.4).sin();
                    -40.0 - band as f32 * 0.3 + wobble + ripple
                })
                .collect();
            normal.push_clip(&heard_clip(clip, &spectrum), "");
        }
        normal
    }

    /// Clip number `clip` of a machine as the detector hears it: three windows whose band means
    /// are `spectrum`, an embedding and clicks that vary a little with the clip's number.
    fn heard_clip(clip: u16, spectrum: &[f32]) -> crate::inference::Inference {
        let wobble = f32::from(clip) * 0.1;
        let embeddings: Vec<f32> = (0..3 * 4)
            .map(|i| ((i % 4) as f32 + 1.0) * (1.0 + wobble) + (i / 4) as f32 * 0.05)
            .collect();
        let band_means: Vec<f32> = (0..3).flat_map(|_| spectrum.iter().copied()).collect();
        let band_peaks: Vec<f32> = band_means.iter().map(|m| m + 6.0 + wobble).collect();
        let samples: Vec<f32> = (0..32_000)
            .map(|i| {
                let hum = 0.05 * (std::f32::consts::TAU * 120.0 * i as f32 / 16_000.0).sin();
                if i % 8_000 < 20 {
                    hum + 0.3 + 0.1 * f32::from(clip)
                } else {
                    hum
                }
            })
            .collect();
        crate::inference::Inference {
            windows: 3,
            probabilities: Vec::new(),
            embeddings,
            band_means,
            band_peaks,
            waveform: Waveform::measure(&samples),
        }
    }

    /// A machine of `machine_type` enrolled from `normal` with a 1 % false-alarm target.
    fn enrolled(machine_type: &str, normal: &NormalWindows) -> (MachineKey, MachineProfile) {
        let key = MachineKey {
            machine_type: machine_type.into(),
            machine_id: "m-1".into(),
        };
        let profile = enroll_profile(
            Scope::Machine,
            &key,
            DetectorKind::Neighbours,
            normal,
            4,
            true,
            99.0,
        )
        .expect("enrolled");
        (key, profile)
    }

    #[test]
    fn a_contour_keeps_tones_and_drops_the_envelope() {
        let contour = SpectrumForm::Contour { half_width: 4 };
        // A tilted envelope, edges included, is all envelope.
        let mut tilt: Vec<f32> = (0..BANDS).map(|band| -30.0 - 0.5 * band as f32).collect();
        contour.apply(&mut tilt);
        assert!(tilt.iter().all(|v| v.abs() < 1e-3), "{tilt:?}");
        // A 9 dB tone on it stands 8 dB above the line through its nine bands; its neighbours
        // sit a little below theirs.
        let mut toned: Vec<f32> = (0..BANDS).map(|band| -30.0 - 0.5 * band as f32).collect();
        toned[30] += 9.0;
        contour.apply(&mut toned);
        assert!((toned[30] - 8.0).abs() < 1e-3, "{}", toned[30]);
        assert!(toned[29] < 0.0 && toned[31] < 0.0 && toned[40].abs() < 1e-3);
        // By level, nothing moves.
        let mut level = vec![-30.0_f32; BANDS];
        level[30] += 9.0;
        let before = level.clone();
        SpectrumForm::Level.apply(&mut level);
        assert_eq!(level, before);
    }

    #[test]
    fn a_healthy_clip_with_a_new_envelope_is_in_range_and_a_moved_tone_is_not() {
        // A fan's spectrum: a hum at band 20 on a falling slope, bands wobbling by a few tenths
        // of a dB from clip to clip, and broadband noise from the hall over the top bands that
        // varies between 0 and 3 dB among the healthy clips.
        let spectrum = |clip: u16, hall_db: f32, hum_band: usize| -> Vec<f32> {
            (0..BANDS)
                .map(|band| {
                    let hum = if band == hum_band { 8.0 } else { 0.0 };
                    let hall = hall_db * (-((band as f32 - 52.0) / 10.0).powi(2)).exp();
                    let wobble = 0.3 * ((f32::from(clip) * 7.3 + band as f32 * 1.7).sin());
                    -40.0 - 0.3 * band as f32 + hum + hall + wobble
                })
                .collect()
        };
        let mut normal = NormalWindows::default();
        for clip in 0..8_u16 {
            normal.push_clip(
                &heard_clip(clip, &spectrum(clip, f32::from(clip) * 0.4, 20)),
                "",
            );
        }
        let (_, profile) = enrolled("fan", &normal);
        assert_eq!(
            profile.spectrum,
            SpectrumForm::Contour {
                half_width: CONTOUR_HALF_WIDTH
            }
        );
        let spectrum_part = |clip: &crate::inference::Inference| {
            profile.clip_parts(
                &[],
                &profile.clip_features(&clip.band_means, &clip.band_peaks),
                &clip.waveform,
            )[1]
            .expect("spectrum part")
        };
        // The hall 10 dB louder over the top bands, more than any healthy clip had: in range.
        let noisy_hall = heard_clip(3, &spectrum(11, 10.0, 20));
        assert!(
            spectrum_part(&noisy_hall) < 1.0,
            "{}",
            spectrum_part(&noisy_hall)
        );
        // The hum moved by two bands, the hall as quiet as ever: out of range.
        let moved_hum = heard_clip(3, &spectrum(11, 1.0, 22));
        assert!(
            spectrum_part(&moved_hum) > 1.0,
            "{}",
            spectrum_part(&moved_hum)
        );
    }

    #[test]
    fn a_part_that_varies_among_healthy_clips_does_not_drown_a_steady_one() {
        let key = MachineKey {
            machine_type: "fan".into(),
            machine_id: "f-1".into(),
        };
        let mut profile = fit_statistics(
            Scope::Machine,
            &key,
            DetectorKind::Neighbours,
            ProfileSource::Enrolled,
            &normal_clips(),
            4,
            true,
        )
        .expect("fit");
        // Five healthy clips as their own statistics never saw them: a steady band spectrum, and
        // band peaks that a knock in the hall took far out in one of them.
        let healthy = [
            (0.020, 60.0, 50.0, 4.0),
            (0.030, 45.0, 45.0, 6.0),
            (0.025, 70.0, 60.0, 5.0),
            (0.018, 52.0, 55.0, 3.0),
            (0.022, 64.0, 900.0, 5.5),
        ];
        let held_out: Vec<HeldOutClip> = healthy
            .iter()
            .map(|&(windows, spectrum, peaks, impulsiveness)| HeldOutClip {
                anomaly: false,
                window_scores: vec![windows; 3],
                raw_parts: [
                    Some(windows),
                    Some(spectrum),
                    Some(peaks),
                    Some(impulsiveness),
                ],
            })
            .collect();
        calibrate_profile(&mut profile, &held_out, 99.0).expect("calibrated");
        let parts =
            |spectrum: f64, peaks: f64| [Some(0.022), Some(spectrum), Some(peaks), Some(4.5)];
        let score =
            |spectrum: f64, peaks: f64| profile.weigh(profile.scale(parts(spectrum, peaks)));
        // A hum that moved: the spectrum far beyond any healthy clip's, the peaks ordinary.
        assert!(score(400.0, 60.0) > 1.0, "fault {}", score(400.0, 60.0));
        // Another knock like the healthy one's, and a plain healthy clip: both in range.
        assert!(score(55.0, 900.0) < 1.0, "knock {}", score(55.0, 900.0));
        assert!(score(58.0, 52.0) < 1.0, "healthy {}", score(58.0, 52.0));
        // Added up, the same parts would put the knock over the threshold.
        let mut added = profile.clone();
        added.fusion = Fusion::Sum;
        let knock_added = added.weigh(added.scale(parts(55.0, 900.0)));
        assert!(knock_added > 1.0, "knock added up {knock_added}");
    }

    #[test]
    fn a_profile_keeps_its_latest_clips_up_to_the_limit_and_refuses_damaged_ones() {
        // Clips of ten windows: the limit keeps the latest whole clips that fit in it.
        let clips = MAX_KEPT_WINDOWS / 10 + 5;
        let mut normal = NormalWindows::default();
        for clip in 0..clips {
            normal.embeddings.push(vec![clip as f32; 10 * 2]);
            normal.band_means.push(vec![-40.0; 10 * BANDS]);
            normal.band_peaks.push(vec![-30.0; 10 * BANDS]);
            normal.waveforms.push(Waveform::default());
            normal.sources.push(format!("{clip:064x}"));
        }
        let kept = normal.keep();
        assert_eq!(kept.len(), MAX_KEPT_WINDOWS / 10);
        assert_eq!(
            kept.clips[0].embeddings[0], 5.0,
            "the oldest five are dropped"
        );
        assert_eq!(kept.clips[0].content_sha256, format!("{:064x}", 5));
        let back = NormalWindows::from_kept(&kept, 2).expect("whole windows");
        assert_eq!(back.clips(), MAX_KEPT_WINDOWS / 10);
        assert_eq!(back.sources[0], format!("{:064x}", 5));
        assert!(
            NormalWindows::from_kept(&kept, 3).is_err(),
            "embeddings of another size do not make whole windows"
        );
        let mut damaged = kept.clone();
        damaged.clips[3].band_means.pop();
        let error = NormalWindows::from_kept(&damaged, 2).expect_err("damaged");
        assert!(
            error.to_string().contains("kept recording 3 is damaged"),
            "{error}"
        );
    }

    #[test]
    fn enrolling_scales_every_part_by_clips_its_statistics_never_contained() {
        let normal = normal_clips();
        let (key, profile) = enrolled("valve", &normal);
        // Each clip scored by the statistics fitted without it.
        let (mut spectrum, mut peaks, mut impulsiveness) = (Vec::new(), Vec::new(), Vec::new());
        for left_out in 0..normal.clips() {
            let partial = fit_statistics(
                Scope::Machine,
                &key,
                DetectorKind::Neighbours,
                ProfileSource::Enrolled,
                &normal.without(left_out),
                4,
                true,
            )
            .expect("partial");
            let input = normal.clip(left_out);
            let [_, s, p, i] = partial.raw_parts(
                &[],
                &partial.clip_features(input.band_means, input.band_peaks),
                &input.waveform,
            );
            spectrum.push(s.expect("spectrum part"));
            peaks.push(p.expect("band peaks part"));
            impulsiveness.push(i.expect("impulsiveness part"));
        }
        // Four parts share the 1 % of healthy clips a threshold may flag.
        let range = |values: &[f64]| {
            calibrate::gamma_threshold(values, 99.75)
                .expect("gamma fit")
                .0
        };
        assert_eq!(profile.fusion, Fusion::Furthest);
        assert!((profile.clip_bands_scale - range(&spectrum)).abs() < 1e-9);
        assert_eq!(profile.band_peaks_scale, Some(range(&peaks)));
        assert!((profile.impulsiveness_scale - range(&impulsiveness)).abs() < 1e-9);
        assert_eq!(profile.clip_threshold, 1.0, "out of range is beyond 1");
        // In-sample, the same clips would have looked tamer: the held-out range is the honest one.
        let in_sample: Vec<f64> = (0..normal.clips())
            .filter_map(|c| profile.impulsiveness_departure(&normal.clip(c).waveform))
            .collect();
        assert!(range(&in_sample) < profile.impulsiveness_scale);
        // Judged against its own range, a part that departs is heard however much another part
        // varies among healthy clips.
        let parts = |spectrum: f64, peaks: f64| {
            [
                Some(0.0),
                Some(spectrum * profile.clip_bands_scale),
                Some(peaks * profile.band_peaks_scale.unwrap_or(1.0)),
                Some(0.0),
            ]
        };
        assert!(profile.weigh(profile.scale(parts(1.5, 0.1))) > profile.clip_threshold);
        assert!(profile.weigh(profile.scale(parts(0.9, 0.9))) < profile.clip_threshold);
    }
}
