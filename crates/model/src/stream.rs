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
    /// Each window's loudest moment in each band, in dB (`windows × 64`, window by window), so
    /// that a profile judging the stream draws its peaks ([`crate::features::PeakStatistic`])
    /// from every window, as it does from a clip's. Summaries kept before held one row, the
    /// loudest of the frame's windows.
    pub band_peaks: Vec<f32>,
    /// The frame's waveform statistics (summaries from before they were kept have none).
    #[serde(default)]
    pub waveform: Waveform,
}

impl WindowSummary {
    /// Whether its band energies have the shape the model takes: one row of means, and between
    /// one row of peaks (summaries kept before every window's were) and one per window.
    pub fn has_whole_bands(&self) -> bool {
        let peaks = self.band_peaks.len();
        self.band_means.len() == BANDS
            && peaks > 0
            && peaks.is_multiple_of(BANDS)
            && peaks <= self.windows.saturating_mul(BANDS)
    }
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
                && h.has_whole_bands()
                && h.mean_score.is_finite()
        });
        for summary in usable {
            // A summary stands for its windows: its mean repeated keeps the clip's means weighted
            // by duration, and its peak rows are its windows' (one row for all of them in a
            // summary kept before every window's were).
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame of `windows` windows whose peaks in band 0 are `peak`, window after window.
    fn frame(windows: usize, peak: f32) -> Inference {
        let mut band_peaks = vec![0.0_f32; windows * BANDS];
        for row in band_peaks.chunks_exact_mut(BANDS) {
            row[0] = peak;
        }
        Inference {
            windows,
            probabilities: Vec::new(),
            embeddings: Vec::new(),
            band_means: vec![-50.0; windows * BANDS],
            band_peaks,
            waveform: Waveform::default(),
        }
    }

    fn summary(windows: usize, peak_rows: usize) -> WindowSummary {
        WindowSummary {
            model_version: "v".into(),
            windows,
            mean_score: 0.1,
            band_means: vec![-50.0; BANDS],
            band_peaks: vec![1.0; peak_rows * BANDS],
            waveform: Waveform::default(),
        }
    }

    #[test]
    fn a_stream_keeps_every_remembered_window_s_peaks() {
        let history = [summary(3, 3), summary(3, 1), summary(2, 3)];
        let stream = StreamWindows::new(&frame(2, 9.0), &[0.2, 0.3], &history, "v");
        // Three windows' rows, a summary kept before every window's were (one row for three
        // windows), then the frame's own two; a summary with more rows than windows is left out.
        assert_eq!(stream.band_peaks.len(), (3 + 1 + 2) * BANDS);
        assert_eq!(stream.scores.len(), 3 + 3 + 2);
        assert_eq!(stream.band_means.len(), stream.scores.len() * BANDS);
        let band_0: Vec<f32> = stream
            .band_peaks
            .chunks_exact(BANDS)
            .map(|r| r[0])
            .collect();
        assert_eq!(band_0, [1.0, 1.0, 1.0, 1.0, 9.0, 9.0]);
    }
}
