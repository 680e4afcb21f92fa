//! Frames as the model hears them: interleaved PCM or float bytes to mono `f32` at the model's rate.

use auscult_frame::SampleEncoding;

/// The audio of one frame, as stored.
#[derive(Debug, Clone)]
pub struct FrameAudio<'a> {
    pub sample_rate_hz: u32,
    pub channels: u16,
    pub encoding: SampleEncoding,
    pub samples: &'a [u8],
}

/// Channel 0 of the frame (the channel the model was trained on), resampled to `rate`.
pub fn mono_16k(frame: &FrameAudio<'_>, rate: u32) -> Result<Vec<f32>, String> {
    if frame.channels == 0 {
        return Err("a frame with no channels".into());
    }
    let interleaved = auscult_frame::decode_interleaved(frame.encoding, frame.samples);
    let channel0: Vec<f32> = interleaved
        .chunks_exact(usize::from(frame.channels))
        .map(|f| f[0])
        .collect();
    let audio = auscult_audio::Audio {
        sample_rate: frame.sample_rate_hz,
        samples: channel0,
    };
    Ok(auscult_audio::resample(audio, rate)?.samples)
}
