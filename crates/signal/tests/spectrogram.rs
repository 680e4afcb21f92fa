//! Properties of the log-mel windows, and agreement with librosa.

use auscult_signal::{
    BANDS, FRAMES, MelSpectrogram, SpectrogramConfig, band_means, bands, relative_level,
};

fn tone(hz: f32, amplitude: f32, len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| amplitude * (std::f32::consts::TAU * hz * i as f32 / 16_000.0).sin())
        .collect()
}

fn loudest_band(window: &[f32]) -> usize {
    let means = band_means(window);
    (0..BANDS)
        .max_by(|&a, &b| means[a].total_cmp(&means[b]))
        .expect("bands")
}

#[test]
fn a_pure_tone_lands_in_the_band_that_covers_it() {
    let config = SpectrogramConfig::default();
    let ranges = bands(&config);
    let mut mel = MelSpectrogram::new(config).expect("config");
    for hz in [125.0, 440.0, 1000.0, 2500.0, 6000.0] {
        let window = mel.window(&tone(hz, 0.5, 16_000)).expect("window");
        let band = loudest_band(&window);
        let range = ranges[band];
        assert!(
            range.low_hz <= hz && hz <= range.high_hz,
            "{hz} Hz peaked in band {band} ({:.0}–{:.0} Hz)",
            range.low_hz,
            range.high_hz
        );
        // The nearest centre wins: neighbours may share the tone, but not more of it.
        let nearest = (0..BANDS)
            .min_by(|&a, &b| {
                (ranges[a].centre_hz - hz)
                    .abs()
                    .total_cmp(&(ranges[b].centre_hz - hz).abs())
            })
            .expect("bands");
        assert!(
            band.abs_diff(nearest) <= 1,
            "{hz} Hz: band {band}, nearest centre {nearest}"
        );
    }
}

#[test]
fn silence_and_full_scale_clipping_stay_finite() {
    let mut mel = MelSpectrogram::new(SpectrogramConfig::default()).expect("config");
    let silence = mel.window(&vec![0.0; 16_000]).expect("window");
    assert!(
        silence.iter().all(|v| *v == -100.0),
        "silence is the −100 dB floor"
    );

    let clipped: Vec<f32> = tone(440.0, 8.0, 16_000)
        .iter()
        .map(|v| v.clamp(-1.0, 1.0))
        .collect();
    let square = mel.window(&clipped).expect("window");
    assert!(square.iter().all(|v| v.is_finite()));

    let mut broken = tone(440.0, 0.5, 16_000);
    broken[100] = f32::NAN;
    broken[200] = f32::INFINITY;
    let window = mel.window(&broken).expect("window");
    assert!(
        window.iter().all(|v| v.is_finite()),
        "non-finite samples are silenced"
    );
}

#[test]
fn windows_are_cut_at_the_configured_hop() {
    let config = SpectrogramConfig::default();
    assert_eq!(config.window_samples(), 15_688);
    let offsets: Vec<usize> = config.window_offsets(160_000, 8_000).collect();
    assert_eq!(offsets.len(), 19);
    assert_eq!(offsets[18], 144_000);
    assert_eq!(config.window_offsets(15_687, 8_000).count(), 0);
    let mut mel = MelSpectrogram::new(config).expect("config");
    let clip = tone(440.0, 0.5, 40_000);
    let all = mel.windows(&clip, 8_000);
    assert_eq!(all.len(), 4 * FRAMES * BANDS);
    let third = mel.window(&clip[16_000..]).expect("window");
    assert_eq!(
        &all[2 * FRAMES * BANDS..3 * FRAMES * BANDS],
        third.as_slice()
    );
}

/// `tests/fixtures/reference.py` computed `reference.json` from `valve_1s.wav` with librosa.
#[test]
fn matches_librosa_within_a_hundredth_of_a_decibel() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let audio = auscult_audio::read_wav(
        &fixtures.join("valve_1s.wav"),
        auscult_audio::ChannelChoice::First,
        auscult_audio::AudioLimits::default(),
    )
    .expect("fixture");
    let reference: Vec<Vec<f32>> = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join("reference.json")).expect("reference"),
    )
    .expect("json");
    assert_eq!(reference.len(), FRAMES);
    let mut mel = MelSpectrogram::new(SpectrogramConfig::default()).expect("config");
    let window = mel.window(&audio.samples).expect("window");
    let worst = window
        .chunks_exact(BANDS)
        .zip(&reference)
        .flat_map(|(ours, theirs)| ours.iter().zip(theirs).map(|(a, b)| (a - b).abs()))
        .fold(0.0_f32, f32::max);
    assert!(worst < 0.01, "largest difference from librosa: {worst} dB");
}

#[test]
fn relative_level_removes_a_uniform_gain_and_keeps_the_shape() {
    let mut mel = MelSpectrogram::new(SpectrogramConfig::default()).expect("config");
    let len = 3 * 16_000;
    // Two tones over a microphone's noise floor: a band with no energy at all sits at the −100 dB
    // floor whatever the gain, and real recordings have none.
    let mut state = 0x9e37_79b9_u32;
    let sound: Vec<f32> = tone(440.0, 0.1, len)
        .iter()
        .zip(tone(3_000.0, 0.02, len))
        .map(|(a, b)| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            a + b + 1e-3 * (state as f32 / u32::MAX as f32 - 0.5)
        })
        .collect();
    let relative = |gain_db: f32, mel: &mut MelSpectrogram| {
        let gain = 10_f32.powf(gain_db / 20.0);
        let scaled: Vec<f32> = sound.iter().map(|s| s * gain).collect();
        let mut windows = mel.windows(&scaled, 8_000);
        let absolute = windows.clone();
        relative_level(&mut windows);
        (absolute, windows)
    };
    let (quiet_absolute, quiet) = relative(-6.0, &mut mel);
    let (loud_absolute, loud) = relative(6.0, &mut mel);
    let moved = loud_absolute
        .iter()
        .zip(&quiet_absolute)
        .map(|(l, q)| l - q)
        .sum::<f32>()
        / loud_absolute.len() as f32;
    assert!(
        (moved - 12.0).abs() < 0.5,
        "12 dB of gain moved the values {moved} dB"
    );
    let largest = loud
        .iter()
        .zip(&quiet)
        .map(|(l, q)| (l - q).abs())
        .fold(0.0_f32, f32::max);
    assert!(
        largest < 0.01,
        "relative values moved {largest} dB under a gain change"
    );
    // The shape survives: the 440 Hz band still stands far above the 3 kHz one.
    assert_eq!(
        loudest_band(&quiet[..FRAMES * BANDS]),
        loudest_band(&quiet_absolute[..FRAMES * BANDS])
    );
}
