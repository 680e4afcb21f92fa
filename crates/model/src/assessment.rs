//! Verdicts: a machine's profile applied to what the network heard, with the bands that explain
//! it, for a clip, a frame, or a frame with the stream before it.

use auscult_signal::BANDS;

use crate::ModelError;
use crate::dataset::MachineKey;
use crate::detector::Detector;
use crate::inference::Inference;
use crate::profile::{MachineProfile, PartScores, Scope};
use crate::stats::BandGaussian;
use crate::stream::{StreamWindows, WindowSummary};

/// The class the network hears most, as a machine in an operating state.
struct TopClass {
    identity: String,
    machine: MachineKey,
    probability: f32,
}

/// A band whose energy departs from the machine's normal.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BandDeparture {
    pub low_hz: f32,
    pub high_hz: f32,
    pub measure: Measure,
    /// Energy above (+) or below (−) the machine's normal mean, in dB. For a band mean judged by
    /// contour ([`crate::profile::SpectrumForm::Contour`]), how much further the band stands above
    /// the line through its neighbours than it does in normal sound.
    pub departure_db: f32,
    /// The same in standard deviations of the machine's normal windows.
    pub z: f32,
}

/// Which energy of a band departs: its mean over the sound, or its loudest moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    Mean,
    Peak,
}

/// The verdict on a clip or a frame.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Assessment {
    pub verdict: Verdict,
    /// The machine and operating state the sound is most like, e.g. `valve/section_00/pat_00`;
    /// never a condition (that is the verdict's). For a machine the network has classes of, the
    /// most likely of its own operating states; otherwise the network's guess among all it knows.
    pub class: String,
    /// How likely the class is: among the machine's own classes where it has them, among all
    /// otherwise.
    pub class_probability: f32,
    /// For a clip, [`MachineProfile::clip_score`] (with [`crate::profile::Fusion::Furthest`], how
    /// far its furthest part is in units of that part's normal range: above 1 is out of range);
    /// for shorter sound, the mean window score
    /// ([`MachineProfile::score`]: the embedding's cosine distance to the nearest normal centre
    /// for a neighbours profile).
    pub anomaly_score: f64,
    pub threshold: f64,
    pub window_scores: Vec<f64>,
    /// The machine whose profile judged this sound, and how specific that profile is.
    pub profile: MachineKey,
    pub scope: Scope,
    pub detector: crate::profile::DetectorKind,
    pub top_bands: Vec<BandDeparture>,
    /// Windows of earlier frames of the stream judged with this one (0: judged alone).
    #[serde(default)]
    pub history_windows: usize,
    /// Judged over a clip's length (against the clip threshold), not as a lone window or two.
    #[serde(default)]
    pub as_clip: bool,
    /// For a clip, the parts its score was put together from: which of them flagged it.
    #[serde(default)]
    pub parts: Option<PartScores>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Normal,
    Anomalous,
}

impl Detector {
    /// The machine the network believes it hears: the class most windows vote for.
    pub fn predicted_machine(&self, inference: &Inference) -> Option<MachineKey> {
        self.top_class(inference, None).map(|top| top.machine)
    }

    /// What the sound is most like — a machine in an operating state, never a condition: whether
    /// it is faulty is the verdict's to say, so the two cannot contradict each other. The
    /// probabilities of classes that differ only in condition (models trained with fault labels)
    /// are added. `within` a machine the network has classes of, only its own classes count: for
    /// a machine whose identity is known, the question is which of its operating states it is in,
    /// and "sounds like a slider" said of a registered valve would be noise in every dashboard
    /// (the network's unrestricted guess is what `class_accuracy` measures).
    fn top_class(&self, inference: &Inference, within: Option<&MachineKey>) -> Option<TopClass> {
        let classes = self.info.network.classes;
        if inference.windows == 0 || classes == 0 || self.info.classes.len() != classes {
            return None;
        }
        let mut by_identity: Vec<(String, MachineKey, f32)> = Vec::new();
        for row in inference.probabilities.chunks_exact(classes) {
            for (label, p) in self.info.classes.iter().zip(row) {
                let identity = label.identity();
                let share = p / inference.windows as f32;
                match by_identity.iter_mut().find(|(i, _, _)| *i == identity) {
                    Some(entry) => entry.2 += share,
                    None => by_identity.push((identity, label.machine(), share)),
                }
            }
        }
        if let Some(machine) = within
            && by_identity.iter().any(|(_, m, _)| m == machine)
        {
            // Given the machine, how likely each of its states is: a registered valve the network
            // would call a slider is still in one of its own patterns, and "pat_00 (0 %)" would
            // say nothing about which.
            by_identity.retain(|(_, m, _)| m == machine);
            let total: f32 = by_identity.iter().map(|(_, _, p)| p).sum();
            if total > 0.0 {
                by_identity.iter_mut().for_each(|(_, _, p)| *p /= total);
            }
        }
        by_identity
            .into_iter()
            .max_by(|a, b| a.2.total_cmp(&b.2))
            .map(|(identity, machine, probability)| TopClass {
                identity,
                machine,
                probability,
            })
    }

    /// Judges windows of one machine (`None`: the machine the network recognises).
    pub fn assess(
        &self,
        inference: &Inference,
        machine: Option<&MachineKey>,
    ) -> Result<Assessment, ModelError> {
        self.assess_in_stream(inference, machine, &[])
    }

    /// Judges the newest frame of a stream together with what is remembered of the frames before it
    /// (`history`, oldest first): once the frames reach a clip's length they are judged as a clip, so
    /// faults that show only in a clip's band peaks (a valve's dull click) are heard live. History
    /// from another model version is ignored: its scores are on another scale.
    pub fn assess_in_stream(
        &self,
        inference: &Inference,
        machine: Option<&MachineKey>,
        history: &[WindowSummary],
    ) -> Result<Assessment, ModelError> {
        if inference.windows == 0 {
            return Err(ModelError::NoWindows);
        }
        let recognised;
        let machine = match machine {
            Some(named) => named,
            // The network names one of the machines it knows whatever it hears, and can be wrong:
            // callers that cannot name the machine say so to their users.
            None => {
                recognised = self
                    .predicted_machine(inference)
                    .ok_or(ModelError::NoWindows)?;
                &recognised
            }
        };
        let top = self.top_class(inference, Some(machine));
        let profile = self.judging_profile(machine)?;
        let dim = self.info.network.embedding_size();
        let window_scores: Vec<f64> =
            crate::profile::window_pairs(&inference.embeddings, &inference.band_means, dim)
                .map(|(e, b)| profile.score(e, b))
                .collect();
        let stream = StreamWindows::new(inference, &window_scores, history, &self.info.version);
        // A clip long enough to show its peaks is judged as a clip; anything shorter (a live
        // frame without history, a few seconds) by its mean window score against the window threshold.
        let as_clip = stream.scores.len() >= profile.min_clip_windows;
        let (anomaly_score, threshold, parts) = if as_clip {
            let (score, parts) = profile.clip_score_parts(
                &stream.scores,
                &stream.clip_features(profile),
                &stream.waveform,
            );
            (score, profile.clip_threshold, Some(parts))
        } else {
            (
                window_scores.iter().sum::<f64>() / window_scores.len() as f64,
                profile.window_threshold,
                None,
            )
        };
        let (class, class_probability) =
            top.map(|t| (t.identity, t.probability)).unwrap_or_default();
        let top_bands = if as_clip {
            self.top_bands_of(profile, &stream.band_means, &stream.band_peaks, 3)
        } else {
            self.top_bands(profile, inference, 3)
        };
        Ok(Assessment {
            verdict: if anomaly_score > threshold {
                Verdict::Anomalous
            } else {
                Verdict::Normal
            },
            class,
            class_probability,
            anomaly_score,
            threshold,
            window_scores,
            profile: profile.key(),
            scope: profile.scope,
            detector: profile.detector,
            top_bands,
            history_windows: stream.scores.len() - inference.windows,
            as_clip,
            parts,
        })
    }

    /// What a stream should remember of this frame to judge the frames after it.
    pub fn summarise(&self, inference: &Inference, assessment: &Assessment) -> WindowSummary {
        let windows = inference.windows.max(1);
        WindowSummary {
            model_version: self.info.version.clone(),
            windows: inference.windows,
            mean_score: assessment.window_scores.iter().sum::<f64>() / windows as f64,
            band_means: crate::features::mean_bands(&inference.band_means),
            band_peaks: inference.band_peaks.clone(),
            waveform: inference.waveform.clone(),
        }
    }

    /// The `count` bands whose energy departs most from the profile's normal: the clip's band
    /// means and peaks against normal clips when the clip is long enough, else its mean band
    /// energies against normal windows.
    pub fn top_bands(
        &self,
        profile: &MachineProfile,
        inference: &Inference,
        count: usize,
    ) -> Vec<BandDeparture> {
        if inference.windows >= profile.min_clip_windows {
            self.top_bands_of(profile, &inference.band_means, &inference.band_peaks, count)
        } else {
            self.departures(
                &profile.window_bands(&crate::features::mean_bands(&inference.band_means)),
                &profile.bands,
                count,
            )
        }
    }

    /// [`Self::top_bands`] of a clip given as `windows × 64` band means and peaks.
    fn top_bands_of(
        &self,
        profile: &MachineProfile,
        band_means: &[f32],
        band_peaks: &[f32],
        count: usize,
    ) -> Vec<BandDeparture> {
        match &profile.clip_bands {
            Some(clip_bands) => self.departures(
                &profile.clip_features(band_means, band_peaks),
                clip_bands,
                count,
            ),
            None => self.departures(
                &profile.window_bands(&crate::features::mean_bands(band_means)),
                &profile.bands,
                count,
            ),
        }
    }

    /// The `count` features furthest from `normal`, as band departures (features past the 64th are
    /// band peaks).
    fn departures(
        &self,
        features: &[f32],
        normal: &BandGaussian,
        count: usize,
    ) -> Vec<BandDeparture> {
        let mut departures: Vec<BandDeparture> = normal
            .z_scores(features)
            .iter()
            .zip(features.iter().zip(&normal.mean))
            .enumerate()
            .map(|(i, (&z, (value, mean)))| {
                let range = self.bands()[i % BANDS];
                BandDeparture {
                    low_hz: range.low_hz,
                    high_hz: range.high_hz,
                    measure: if i < BANDS {
                        Measure::Mean
                    } else {
                        Measure::Peak
                    },
                    departure_db: value - mean,
                    z,
                }
            })
            .collect();
        departures.sort_by(|a, b| b.z.abs().total_cmp(&a.z.abs()));
        departures.truncate(count);
        departures
    }
}
