//! Sample-rate conversion with an FFT resampler (band-limited, so nothing above the new Nyquist
//! frequency folds back into the bands the detector listens to).

use rubato::{FftFixedIn, Resampler};

use crate::Audio;

/// Converts `audio` to `sample_rate`; the output has `round(len × out / in)` samples and is
/// aligned with the input (the resampler's delay is removed).
pub fn resample(audio: Audio, sample_rate: u32) -> Result<Audio, String> {
    if audio.sample_rate == sample_rate {
        return Ok(audio);
    }
    let (from, to) = (audio.sample_rate as usize, sample_rate as usize);
    let wanted = (audio.samples.len() as u128 * to as u128).div_ceil(from as u128) as usize;
    let mut resampler = FftFixedIn::<f32>::new(from, to, 1024, 2, 1)
        .map_err(|e| format!("cannot resample {from} Hz to {to} Hz: {e}"))?;
    let delay = resampler.output_delay();
    let mut out = Vec::with_capacity(wanted + delay + 2048);
    let mut rest = audio.samples.as_slice();
    let failure = |e: rubato::ResampleError| format!("resampling failed: {e}");
    while rest.len() >= resampler.input_frames_next() {
        let take = resampler.input_frames_next();
        let chunk = resampler.process(&[&rest[..take]], None).map_err(failure)?;
        out.extend_from_slice(&chunk[0]);
        rest = &rest[take..];
    }
    // The tail, then silence until the delayed output has come through.
    let chunk = resampler
        .process_partial(Some(&[rest]), None)
        .map_err(failure)?;
    out.extend_from_slice(&chunk[0]);
    while out.len() < wanted + delay {
        let chunk = resampler
            .process_partial::<&[f32]>(None, None)
            .map_err(failure)?;
        out.extend_from_slice(&chunk[0]);
    }
    out.drain(..delay);
    out.truncate(wanted);
    Ok(Audio {
        sample_rate,
        samples: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, hz: f32, seconds: f32) -> Audio {
        let n = (rate as f32 * seconds) as usize;
        Audio {
            sample_rate: rate,
            samples: (0..n)
                .map(|i| (std::f32::consts::TAU * hz * i as f32 / rate as f32).sin())
                .collect(),
        }
    }

    #[test]
    fn a_tone_keeps_its_pitch_phase_and_length() {
        for from in [8_000, 22_050, 44_100, 48_000] {
            let audio = resample(tone(from, 1000.0, 1.0), 16_000).expect("resample");
            assert_eq!(audio.sample_rate, 16_000);
            assert_eq!(audio.samples.len(), 16_000, "from {from}");
            let reference = tone(16_000, 1000.0, 1.0);
            // Away from the edges, the resampled tone is the tone sampled at 16 kHz, give or take a
            // third of a sample of delay (0.13 at 1 kHz).
            let worst = audio.samples[2000..14_000]
                .iter()
                .zip(&reference.samples[2000..14_000])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0_f32, f32::max);
            assert!(worst < 0.15, "from {from} Hz: worst error {worst}");
        }
    }

    #[test]
    fn same_rate_is_untouched() {
        let audio = tone(16_000, 440.0, 0.1);
        assert_eq!(resample(audio.clone(), 16_000).expect("resample"), audio);
    }
}
