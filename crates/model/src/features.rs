//! Clip-level features computed from the sound alone, before any network: the band profile the
//! profiles judge, and the single-number statistics a model has to beat to be worth its weights.

use auscult_signal::{BANDS, BandRange};

/// A clip's band profile from its windows' band means and peaks: `[mean of means; peaks]`, the
/// peaks drawn from the windows' as `peak_statistic` says.
pub fn clip_features(
    band_means: &[f32],
    band_peaks: &[f32],
    peak_statistic: PeakStatistic,
) -> Vec<f32> {
    let mut features = mean_bands(band_means);
    features.extend(peak_bands(band_peaks, peak_statistic));
    features
}

/// How a clip's band peaks are drawn from its windows' (each window's loudest frame in each band).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeakStatistic {
    /// The loudest window's: a single event decides it — one knock in the hall, or a sound that
    /// an operating pattern never heard in training makes once. Profiles written before
    /// [`Self::UpperQuartile`] are read as this, so a model file keeps the verdicts it was
    /// calibrated for.
    #[default]
    Loudest,
    /// The upper quartile over windows: what a quarter of the clip's windows reach, the loud
    /// moments that recur — a valve's click, a slider's stroke, a fan's beat. A fault that changes
    /// them moves it; a one-off event does not (the impulsiveness judges those, scale by scale).
    /// On the valve with an operating pattern left out of training, the band peaks alone ranked
    /// that pattern's subtle faults at AUC 0.57 by the loudest window and 0.98 by the upper
    /// quartile, and the clip's F1 rose from 0.65 to 0.94.
    UpperQuartile,
}

/// Per band, over windows of per-window band peaks (`windows × 64` → 64), the loudest or the upper
/// quartile (linearly interpolated between the two nearest windows); −100 dB where a band has no
/// window with a number in it.
pub fn peak_bands(rows: &[f32], statistic: PeakStatistic) -> Vec<f32> {
    (0..BANDS)
        .map(|band| {
            let mut column: Vec<f32> = rows
                .chunks_exact(BANDS)
                .map(|row| row[band])
                .filter(|value| !value.is_nan())
                .collect();
            if column.is_empty() {
                return -100.0;
            }
            match statistic {
                PeakStatistic::Loudest => column.into_iter().fold(f32::NEG_INFINITY, f32::max),
                PeakStatistic::UpperQuartile => {
                    column.sort_by(f32::total_cmp);
                    let at = 0.75 * (column.len() - 1) as f32;
                    let below = at.floor() as usize;
                    let share = at - below as f32;
                    match column.get(below + 1) {
                        // Interpolated only where it must be: an infinite neighbour would make
                        // a NaN of `share × ∞` even with nothing to share.
                        Some(&above) if share > 0.0 => {
                            column[below] + share * (above - column[below])
                        }
                        _ => column[below],
                    }
                }
            }
        })
        .collect()
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

/// Samples in one block of [`Waveform::peaks`]: a second at the model's 16 kHz, the length of a
/// gateway's frame.
pub const PEAK_BLOCK: usize = 16_000;

/// The time scales, in samples at 16 kHz, at which a waveform's loudest moment is measured: a
/// single sample (the crest factor's peak), then 1.6, 6.25, 25 and 100 ms, in fixed frames from
/// the start of each block (an impact straddling two frames reads up to 3 dB low at the longer
/// scales). A mechanical impact lasts from a fraction of a millisecond (a sharp click) to tens of
/// milliseconds (a dull thud, a rattle), so how impulsive a machine sounds is a shape over scales,
/// not one number: a valve whose click has gone dull loses its sample peak but not its 25 ms
/// loudness. Each divides [`PEAK_BLOCK`], so frames never straddle blocks, and a stream of
/// one-second frames adds up to its clip exactly.
pub const IMPULSE_SCALES: [usize; 5] = [1, 25, 100, 400, 1_600];

/// What the waveform itself says, kept so that it can be added up over the frames of a stream:
/// how impulsive the sound is at each of [`IMPULSE_SCALES`], independent of the microphone's gain
/// and resolving clicks far shorter than a spectrogram frame.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Waveform {
    /// Per block of [`PEAK_BLOCK`] samples (the last may be shorter), the RMS of its loudest frame
    /// at each of [`IMPULSE_SCALES`] (at one sample, the largest absolute sample): `blocks ×
    /// IMPULSE_SCALES.len()` values, block by block. A scale longer than a short last block
    /// measures 0 there.
    pub peaks: Vec<f32>,
    /// Sum of squared samples.
    pub energy: f64,
    pub samples: usize,
}

impl Waveform {
    pub fn measure(samples: &[f32]) -> Self {
        let mut peaks =
            Vec::with_capacity(samples.len().div_ceil(PEAK_BLOCK) * IMPULSE_SCALES.len());
        for block in samples.chunks(PEAK_BLOCK) {
            for scale in IMPULSE_SCALES {
                let loudest = block
                    .chunks_exact(scale)
                    .map(|frame| {
                        frame
                            .iter()
                            .map(|&s| f64::from(s) * f64::from(s))
                            .sum::<f64>()
                    })
                    .fold(0.0_f64, f64::max);
                peaks.push((loudest / scale as f64).sqrt() as f32);
            }
        }
        Self {
            peaks,
            energy: samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum(),
            samples: samples.len(),
        }
    }

    /// Both spans together.
    pub fn merge(&mut self, other: &Self) {
        self.peaks.extend_from_slice(&other.peaks);
        self.energy += other.energy;
        self.samples += other.samples;
    }

    /// Whether a span measured in one piece has as many peaks as its samples call for: summaries
    /// kept before the scales existed had one per block, and a stream with any of them has no
    /// measure. (A stream merged from frames of other lengths has a block per frame.)
    pub fn is_complete(&self) -> bool {
        self.samples > 0
            && self.peaks.len() == self.samples.div_ceil(PEAK_BLOCK) * IMPULSE_SCALES.len()
    }

    /// How impulsive the sound is at each of [`IMPULSE_SCALES`], in dB: the loudest frame's RMS
    /// over the whole span's RMS. Kept per block so that a stream's frames add up to exactly the
    /// clip's figures. `None` without sound or with incomplete peaks.
    pub fn impulsiveness_db(&self) -> Option<[f64; IMPULSE_SCALES.len()]> {
        let rms = (self.energy / self.samples.max(1) as f64).sqrt();
        let scales = IMPULSE_SCALES.len();
        if self.samples == 0
            || self.peaks.is_empty()
            || !self.peaks.len().is_multiple_of(scales)
            || !rms.is_finite()
            || rms <= 1e-9
        {
            return None;
        }
        let mut loudest = [0.0_f32; IMPULSE_SCALES.len()];
        for block in self.peaks.chunks_exact(IMPULSE_SCALES.len()) {
            for (l, p) in loudest.iter_mut().zip(block) {
                if p.is_finite() {
                    *l = l.max(*p);
                }
            }
        }
        if loudest.iter().any(|&l| l <= 0.0) {
            return None;
        }
        Some(loudest.map(|l| 20.0 * (f64::from(l) / rms).log10()))
    }

    /// The crest factor in dB: the loudest sample over the RMS, the first of
    /// [`Self::impulsiveness_db`].
    pub fn crest_db(&self) -> Option<f64> {
        self.impulsiveness_db().map(|scales| scales[0])
    }
}

/// One number per clip, the kind of statistic a maintenance engineer would try first.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ClipStatistic {
    /// Peak over RMS of the waveform, in dB: how impulsive the sound is.
    CrestFactor,
    /// RMS level in dB full scale: how loud the recording is (it depends on the microphone's gain).
    RmsLevel,
    /// The power-weighted mean frequency of the spectrum, in Hz: how bright the sound is.
    SpectralCentroid,
}

impl ClipStatistic {
    pub const ALL: [Self; 3] = [Self::CrestFactor, Self::RmsLevel, Self::SpectralCentroid];
}

/// The [`ClipStatistic`]s of one clip, in the order of [`ClipStatistic::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClipStatistics(pub [f64; 3]);

impl ClipStatistics {
    /// From the waveform's measure and its absolute (not level-shifted) log-mel windows. The crest
    /// factor is the first of the model's impulse scales ([`Waveform::crest_db`]), so the baseline
    /// hears the same number the model's impulsiveness part starts from.
    pub fn measure(waveform: &Waveform, windows: &[f32], bands: &[BandRange]) -> Self {
        let floor = 1e-10;
        let rms = (waveform.energy / waveform.samples.max(1) as f64).sqrt();
        let crest = waveform.crest_db().unwrap_or(0.0);
        let level = 20.0 * rms.max(floor).log10();
        let (mut weighted, mut total) = (0.0_f64, 0.0_f64);
        for row in windows.chunks_exact(BANDS) {
            for (db, band) in row.iter().zip(bands) {
                let power = 10_f64.powf(f64::from(*db) / 10.0);
                weighted += power * f64::from(band.centre_hz);
                total += power;
            }
        }
        let centroid = if total > 0.0 { weighted / total } else { 0.0 };
        Self([crest, level, centroid])
    }

    pub fn get(&self, statistic: ClipStatistic) -> f64 {
        self.0[statistic as usize]
    }
}

/// What a machine's normal clips say about one statistic; a clip's score is its distance from
/// their centre in their spread, in either direction — a fault may make a machine quieter or
/// duller as well as louder or brighter.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TwoSided {
    /// The centre: the normal clips' mean, or their median for a two-piece fit.
    pub mean: f64,
    /// Their standard deviation: the spread on both sides, unless a two-piece fit gives each side
    /// its own.
    pub std: f64,
    /// For a two-piece fit ([`Self::fit_two_piece`]): the spread of the normal clips below the
    /// centre, and above it. Fits from before it have neither.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<f64>,
}

impl TwoSided {
    /// `None` with fewer than two reference values.
    pub fn fit(normal: &[f64]) -> Option<Self> {
        if normal.len() < 2 {
            return None;
        }
        let n = normal.len() as f64;
        let mean = normal.iter().sum::<f64>() / n;
        let variance = normal.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        Some(Self {
            mean,
            std: variance.sqrt().max(1e-9),
            below: None,
            above: None,
        })
    }

    /// A two-piece fit: centred on the normal clips' median, each side with its own spread — the
    /// root mean square distance from the centre of the clips on that side, a clip at the centre
    /// counted half on each (so the spread does not jump between odd and even counts), the
    /// symmetric standard deviation where a side has no spread at all. How impulsive a
    /// healthy machine sounds is skewed: a clip that happens to catch a knock from the hall is far
    /// more impulsive than the rest, while nothing makes a healthy clip far less so. One spread for
    /// both sides lets two such clips widen the range below the centre too, where a dull click or a
    /// fan's steadier roar lies; each side's own keeps it as narrow as the healthy clips below the
    /// centre are. `None` with fewer than two values.
    pub fn fit_two_piece(normal: &[f64]) -> Option<Self> {
        let symmetric = Self::fit(normal)?;
        let mut sorted = normal.to_vec();
        sorted.sort_by(f64::total_cmp);
        let middle = sorted.len() / 2;
        let centre = if sorted.len().is_multiple_of(2) {
            (sorted[middle - 1] + sorted[middle]) / 2.0
        } else {
            sorted[middle]
        };
        let at_centre = sorted.iter().filter(|v| **v == centre).count() as f64;
        let spread = |side: &mut dyn Iterator<Item = f64>| {
            let (sum, count) = side.fold((0.0, 0usize), |(s, n), d| (s + d * d, n + 1));
            let spread = (sum / (count as f64 + at_centre / 2.0).max(1.0)).sqrt();
            if spread > 0.0 { spread } else { symmetric.std }
        };
        Some(Self {
            mean: centre,
            below: Some(spread(
                &mut sorted.iter().filter(|v| **v < centre).map(|v| centre - v),
            )),
            above: Some(spread(
                &mut sorted.iter().filter(|v| **v > centre).map(|v| v - centre),
            )),
            ..symmetric
        })
    }

    pub fn score(&self, value: f64) -> f64 {
        let departure = value - self.mean;
        let spread = if departure < 0.0 {
            self.below.unwrap_or(self.std)
        } else {
            self.above.unwrap_or(self.std)
        };
        departure.abs() / spread
    }

    /// The same, with a spread of at least `floor` on each side.
    pub fn with_floor(self, floor: f64) -> Self {
        Self {
            std: self.std.max(floor),
            below: self.below.map(|s| s.max(floor)),
            above: self.above.map(|s| s.max(floor)),
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_of_a_sine_and_a_click_train() {
        let config = auscult_signal::SpectrogramConfig::default();
        let bands = auscult_signal::bands(&config);
        let mut mel = auscult_signal::MelSpectrogram::new(config).expect("config");
        let sine: Vec<f32> = (0..32_000)
            .map(|i| 0.5 * (std::f32::consts::TAU * 1_000.0 * i as f32 / 16_000.0).sin())
            .collect();
        let s = ClipStatistics::measure(
            &Waveform::measure(&sine),
            &mel.windows(&sine, 8_000),
            &bands,
        );
        // A sine's crest factor is √2 (3.01 dB); its RMS 0.5/√2 is −9.03 dBFS.
        assert!(
            (s.get(ClipStatistic::CrestFactor) - 3.01).abs() < 0.05,
            "{s:?}"
        );
        assert!(
            (s.get(ClipStatistic::RmsLevel) + 9.03).abs() < 0.05,
            "{s:?}"
        );
        let centroid = s.get(ClipStatistic::SpectralCentroid);
        assert!((900.0..1_100.0).contains(&centroid), "centroid {centroid}");

        let clicks: Vec<f32> = (0..32_000)
            .map(|i| if i % 4_000 == 0 { 0.9 } else { 0.0 })
            .collect();
        let c = ClipStatistics::measure(
            &Waveform::measure(&clicks),
            &mel.windows(&clicks, 8_000),
            &bands,
        );
        assert!(c.get(ClipStatistic::CrestFactor) > 30.0, "{c:?}");
        assert!(
            c.get(ClipStatistic::SpectralCentroid) > 2_000.0,
            "a click is broadband"
        );
    }

    #[test]
    fn the_crest_factor_hears_clicks_and_streams_add_up_to_the_clip() {
        let second = |click: bool| -> Vec<f32> {
            (0..PEAK_BLOCK)
                .map(|i| {
                    let hum = 0.1 * (std::f32::consts::TAU * 100.0 * i as f32 / 16_000.0).sin();
                    if click && i == 8_000 { 0.9 } else { hum }
                })
                .collect()
        };
        let clip =
            |clicks: &[bool]| -> Vec<f32> { clicks.iter().flat_map(|&c| second(c)).collect() };
        let hum = Waveform::measure(&clip(&[false; 10]))
            .crest_db()
            .expect("crest");
        assert!(
            (hum - 3.01).abs() < 0.05,
            "a sine's crest factor is 3 dB: {hum}"
        );
        let clicking = Waveform::measure(&clip(&[true; 10]))
            .crest_db()
            .expect("crest");
        assert!(clicking > hum + 15.0, "a click every second: {clicking}");
        // Duller clicks: the same rhythm at half the peak is less impulsive.
        let dull: Vec<f32> = clip(&[true; 10])
            .iter()
            .map(|&s| if s > 0.5 { 0.45 } else { s })
            .collect();
        let dull = Waveform::measure(&dull).crest_db().expect("crest");
        assert!(dull < clicking - 5.0, "dull {dull} vs sharp {clicking}");

        // A stream's frames add up to the clip.
        let whole = Waveform::measure(&clip(&[true, false, true, false]));
        let mut streamed = Waveform::measure(&second(true));
        for click in [false, true, false] {
            streamed.merge(&Waveform::measure(&second(click)));
        }
        assert_eq!(streamed.peaks, whole.peaks);
        assert!(
            (streamed.crest_db().expect("crest") - whole.crest_db().expect("crest")).abs() < 1e-6
        );
        assert_eq!(Waveform::default().crest_db(), None);
        assert_eq!(Waveform::measure(&[0.0; 100]).crest_db(), None);
        // Peaks kept before the scales existed (one per block) give no measure.
        let mut legacy = whole.clone();
        legacy.peaks = legacy
            .peaks
            .iter()
            .step_by(IMPULSE_SCALES.len())
            .copied()
            .collect();
        assert!(!legacy.is_complete());
        assert_eq!(legacy.impulsiveness_db(), None);
    }

    #[test]
    fn impulsiveness_tells_a_sharp_click_from_a_dull_thud_the_crest_factor_confuses() {
        let hum = |i: usize| 0.05 * (std::f32::consts::TAU * 100.0 * i as f32 / 16_000.0).sin();
        // The same peak, once in one sample and once held over 25 ms at 1 kHz.
        let sharp: Vec<f32> = (0..2 * PEAK_BLOCK)
            .map(|i| if i == 8_000 { 0.9 } else { hum(i) })
            .collect();
        let dull: Vec<f32> = (0..2 * PEAK_BLOCK)
            .map(|i| {
                if (8_000..8_400).contains(&i) {
                    0.9 * (std::f32::consts::TAU * 1_000.0 * (i as f32 + 4.0) / 16_000.0).sin()
                } else {
                    hum(i)
                }
            })
            .collect();
        let sharp = Waveform::measure(&sharp).impulsiveness_db().expect("sharp");
        let dull = Waveform::measure(&dull).impulsiveness_db().expect("dull");
        let at = |scale: usize| {
            IMPULSE_SCALES
                .iter()
                .position(|&s| s == scale)
                .expect("scale")
        };
        // The crest factor calls the click the more impulsive sound...
        assert!(sharp[at(1)] > dull[at(1)], "sharp {sharp:?} dull {dull:?}");
        // ...while 25 ms frames hear a thud far above anything in the clicking clip.
        assert!(
            dull[at(400)] > sharp[at(400)] + 10.0,
            "sharp {sharp:?} dull {dull:?}"
        );
        // Gain moves none of it.
        let louder: Vec<f32> = (0..2 * PEAK_BLOCK)
            .map(|i| 2.0 * if i == 8_000 { 0.9 } else { hum(i) })
            .collect();
        let louder = Waveform::measure(&louder)
            .impulsiveness_db()
            .expect("louder");
        for (a, b) in louder.iter().zip(sharp) {
            assert!((a - b).abs() < 1e-4, "{louder:?} vs {sharp:?}");
        }
    }

    /// Eight windows' peaks: a click at 40 dB in band 10 in every other window, and in one window
    /// a knock at 70 dB in band 50.
    fn clicks_and_one_knock() -> Vec<f32> {
        let mut rows = vec![0.0_f32; 8 * BANDS];
        for (window, row) in rows.chunks_exact_mut(BANDS).enumerate() {
            if window % 2 == 0 {
                row[10] = 40.0;
            }
            if window == 5 {
                row[50] = 70.0;
            }
        }
        rows
    }

    #[test]
    fn the_upper_quartile_keeps_recurring_peaks_and_drops_a_one_off_knock() {
        let rows = clicks_and_one_knock();
        let loudest = peak_bands(&rows, PeakStatistic::Loudest);
        assert_eq!((loudest[10], loudest[50]), (40.0, 70.0));
        let quartile = peak_bands(&rows, PeakStatistic::UpperQuartile);
        assert_eq!(quartile[10], 40.0, "a click in half the windows stays");
        assert_eq!(
            quartile[50], 0.0,
            "one knock in eight windows is not a recurring peak"
        );
        // Between windows, the quartile is interpolated: 0.75 × 7 = 5.25 of the sorted 0, 0, …,
        // 10, 20, 30 lies a quarter of the way from the sixth value to the seventh.
        let mut rising = vec![0.0_f32; 8 * BANDS];
        for (window, row) in rising.chunks_exact_mut(BANDS).enumerate() {
            row[0] = 10.0 * window.saturating_sub(4) as f32;
        }
        assert_eq!(peak_bands(&rising, PeakStatistic::UpperQuartile)[0], 12.5);
        // One window is its own peak either way; none is silence.
        let one = &rows[..BANDS];
        assert_eq!(peak_bands(one, PeakStatistic::UpperQuartile), one.to_vec());
        assert_eq!(
            peak_bands(&[], PeakStatistic::UpperQuartile),
            vec![-100.0; BANDS]
        );
        // An infinite value is the loudest, which the quartile of five windows does not reach
        // (0, 0, 0, 3, ∞: the fourth exactly); a value that is not a number counts as no window
        // (0, 0, 0, 2: a quarter of the way from the third to the fourth).
        let mut odd = vec![0.0_f32; 5 * BANDS];
        odd[0] = 3.0;
        odd[4 * BANDS] = f32::INFINITY;
        odd[1] = f32::NAN;
        odd[BANDS + 1] = 2.0;
        let quartile = peak_bands(&odd, PeakStatistic::UpperQuartile);
        assert_eq!((quartile[0], quartile[1]), (3.0, 0.5));
        assert_eq!(peak_bands(&odd, PeakStatistic::Loudest)[1], 2.0);
    }

    #[test]
    fn two_sided_scores_departures_either_way() {
        let normal = TwoSided::fit(&[9.0, 10.0, 11.0]).expect("fit");
        assert_eq!(normal.score(10.0), 0.0);
        assert_eq!(normal.score(8.0), normal.score(12.0));
        assert!(normal.score(13.0) > normal.score(11.5));
        assert!(TwoSided::fit(&[1.0]).is_none());
    }

    #[test]
    fn a_two_piece_fit_keeps_one_sides_outliers_from_widening_the_other() {
        // Four healthy clips close together and two that caught a knock, far above them.
        let healthy = [13.0, 13.2, 13.6, 14.0, 18.0, 18.5];
        let symmetric = TwoSided::fit(&healthy).expect("fit");
        let two_piece = TwoSided::fit_two_piece(&healthy).expect("fit");
        assert_eq!(two_piece.mean, 13.8, "centred on the median");
        let below = two_piece.below.expect("a spread below");
        let above = two_piece.above.expect("a spread above");
        assert!(below < 0.7 && above > 2.0, "below {below}, above {above}");
        // A clip 3 dB duller than the median is far out below, and was not with one spread.
        assert!(two_piece.score(10.8) > 4.5, "{}", two_piece.score(10.8));
        assert!(symmetric.score(10.8) < 2.0, "{}", symmetric.score(10.8));
        // The knocks' side is as wide as they made it.
        assert!(two_piece.score(18.5) < 2.5, "{}", two_piece.score(18.5));
        // Floors apply to each side; a fit without sides scores with its one spread.
        let floored = TwoSided::fit_two_piece(&[5.0, 5.0, 5.0])
            .expect("fit")
            .with_floor(0.5);
        assert_eq!((floored.below, floored.above), (Some(0.5), Some(0.5)));
        assert_eq!(floored.score(4.0), 2.0);
        let old = TwoSided {
            below: None,
            above: None,
            ..two_piece
        };
        assert_eq!(old.score(12.8), 1.0 / old.std);
        let read: TwoSided =
            serde_json::from_str(r#"{"mean": 13.0, "std": 2.0}"#).expect("a fit from before sides");
        assert_eq!((read.below, read.above), (None, None));
        assert_eq!((read.score(10.0), read.score(16.0)), (1.5, 1.5));
        // A clip at the centre counts half on each side, so an odd count spreads as an even one.
        let odd = TwoSided::fit_two_piece(&[9.0, 10.0, 12.0]).expect("fit");
        assert_eq!(odd.below, Some((1.0_f64 / 1.5).sqrt()));
        assert_eq!(odd.above, Some((4.0_f64 / 1.5).sqrt()));
        assert!(TwoSided::fit_two_piece(&[1.0]).is_none());
    }
}
