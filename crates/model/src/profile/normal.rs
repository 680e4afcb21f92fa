//! The normal clips a profile is fitted from, as the network heard them, grouped by clip so that
//! each can be left out of the statistics it is scored against.

use auscult_signal::BANDS;

use crate::features::Waveform;
use crate::kept::{KeptClip, KeptRecordings, MAX_KEPT_WINDOWS};
use crate::stats::FitError;

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

    /// The clips whose recording `other` does not hold (clips of unknown source are kept): a
    /// recording counts once however many times it is given.
    pub fn not_in(&self, other: &Self) -> Self {
        let held: std::collections::BTreeSet<&str> = other
            .sources
            .iter()
            .filter(|s| !s.is_empty())
            .map(String::as_str)
            .collect();
        self.select(|i| {
            let source = self.sources.get(i).map_or("", String::as_str);
            source.is_empty() || !held.contains(source)
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

    pub(super) fn without(&self, left_out: usize) -> Self {
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

    pub(super) fn clip(&self, index: usize) -> HeldOutInput<'_> {
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
