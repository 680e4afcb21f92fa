//! Loudness of a frame: cheap features that operators chart and that reveal dead or saturated microphones
//! before any model runs.

/// Level of a frame over all channels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Level {
    /// Root-mean-square level in dB relative to full scale; −inf dB (silence) is stored as [`Level::FLOOR_DBFS`].
    pub rms_dbfs: f32,
    /// Largest absolute sample in dBFS, floored like `rms_dbfs`.
    pub peak_dbfs: f32,
    /// Peak divided by RMS (linear); 0 for silence. High for impulsive sounds (knocks, clicks), ≈1.41 for a sine.
    pub crest_factor: f32,
}

impl Level {
    /// The level reported for digital silence, so that stored values stay finite.
    pub const FLOOR_DBFS: f32 = -200.0;

    pub(crate) fn from_sums(sum_squares: f64, peak: f64, count: usize) -> Self {
        if count == 0 || peak == 0.0 {
            return Self {
                rms_dbfs: Self::FLOOR_DBFS,
                peak_dbfs: Self::FLOOR_DBFS,
                crest_factor: 0.0,
            };
        }
        #[allow(clippy::cast_precision_loss)]
        let rms = (sum_squares / count as f64).sqrt();
        let to_db = |x: f64| {
            #[allow(clippy::cast_possible_truncation)]
            let db = (20.0 * x.log10()) as f32;
            db.max(Self::FLOOR_DBFS)
        };
        #[allow(clippy::cast_possible_truncation)]
        let crest_factor = (peak / rms) as f32;
        Self {
            rms_dbfs: to_db(rms),
            peak_dbfs: to_db(peak),
            crest_factor,
        }
    }
}
