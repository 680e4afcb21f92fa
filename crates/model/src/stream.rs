//! Live streams judged as clips: what a stream remembers of each scored frame, and a frame's
//! windows put together with the remembered ones.

use auscult_signal::BANDS;

use crate::features::Waveform;
use crate::inference::Inference;
use crate::profile::MachineProfile;

/// What a stream remembers of one scored frame: enough to judge later frames together with it
/// without hearing its sound again. Band energies are the spectrogram's, whatever the model; the
/// score belongs to `model_version`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WindowSummary {
    pub model_version: String,
    pub windows: usize,
    /// Mean anomaly score of the frame's windows.
    pub mean_score: f64,
    /// Mean energy of each of the 64 bands over the frame's windows, in dB.
    pub band_means: Vec<f32>,
    /// Loudest moment of each band over the frame's windows, in dB: a one-second frame holds one
    /// window, so this is its window's, and a profile judging the stream draws its peaks
    /// ([`crate::features::PeakStatistic`]) from every window of it.
    pub band_peaks: Vec<f32>,
    /// The frame's waveform statistics (summaries from before they were kept have none).
    #[serde(default)]
    pub waveform: Waveform,
}

/// A frame's windows with the remembered windows before it, as one clip.
pub(crate) struct StreamWindows {
    pub(crate) scores: Vec<f64>,
    pub(crate) band_means: Vec<f32>,
    pub(crate) band_peaks: Vec<f32>,
    pub(crate) waveform: Waveform,
}

impl StreamWindows {
    pub(crate) fn new(
        inference: &Inference,
        window_scores: &[f64],
        history: &[WindowSummary],
        version: &str,
    ) -> Self {
        let mut stream = Self {
            scores: Vec::new(),
            band_means: Vec::new(),
            band_peaks: Vec::new(),
            waveform: Waveform::default(),
        };
        // Impulsiveness over the stream needs every frame's waveform; one summary without it
        // (kept before waveforms, or their scales, were) leaves the stream without one.
        let mut waveform_complete = true;
        let usable = history.iter().filter(|h| {
            h.model_version == version
                && h.windows > 0
                && h.band_means.len() == BANDS
                && h.band_peaks.len() == BANDS
                && h.mean_score.is_finite()
        });
        for summary in usable {
            // A summary stands for its windows: its mean repeated keeps the clip's means weighted
            // by duration, and its peak row carries the loudest moment.
            for _ in 0..summary.windows {
                stream.scores.push(summary.mean_score);
                stream.band_means.extend_from_slice(&summary.band_means);
            }
            stream.band_peaks.extend_from_slice(&summary.band_peaks);
            waveform_complete &= summary.waveform.is_complete();
            stream.waveform.merge(&summary.waveform);
        }
        stream.scores.extend_from_slice(window_scores);
        stream.band_means.extend_from_slice(&inference.band_means);
        stream.band_peaks.extend_from_slice(&inference.band_peaks);
        stream.waveform.merge(&inference.waveform);
        if !waveform_complete {
            stream.waveform = Waveform::default();
        }
        stream
    }

    pub(crate) fn clip_features(&self, profile: &MachineProfile) -> Vec<f32> {
        profile.clip_features(&self.band_means, &self.band_peaks)
    }
}
