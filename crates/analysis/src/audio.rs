//! Frames as the model hears them: interleaved PCM or float bytes to mono `f32` at the model's rate.

use auscult_audio::ChannelChoice;
use auscult_frame::SampleEncoding;

/// The audio of one frame, as stored.
#[derive(Debug, Clone)]
pub struct FrameAudio<'a> {
    pub sample_rate_hz: u32,
    pub channels: u16,
    pub encoding: SampleEncoding,
    pub samples: &'a [u8],
}

/// The channel the model listens to (its `channel`: one microphone, or the mean of all), resampled
/// to `rate`: the same selection as for recordings, so a live stream is heard as the model was
/// trained and evaluated.
pub fn model_audio(
    frame: &FrameAudio<'_>,
    channel: ChannelChoice,
    rate: u32,
) -> Result<Vec<f32>, String> {
    let channels = usize::from(frame.channels);
    if channels == 0 {
        return Err("a frame with no channels".into());
    }
    let interleaved = auscult_frame::decode_interleaved(frame.encoding, frame.samples);
    let frames = interleaved.chunks_exact(channels);
    let samples: Vec<f32> = match channel {
        ChannelChoice::First => frames.map(|f| f[0]).collect(),
        ChannelChoice::Index(index) if usize::from(index) < channels => {
            frames.map(|f| f[usize::from(index)]).collect()
        }
        ChannelChoice::Index(index) => {
            return Err(format!(
                "the model listens to channel {index}, and the frame has {channels}"
            ));
        }
        #[allow(clippy::cast_precision_loss)]
        ChannelChoice::MixDown => frames
            .map(|f| f.iter().sum::<f32>() / channels as f32)
            .collect(),
    };
    let audio = auscult_audio::Audio {
        sample_rate: frame.sample_rate_hz,
        samples,
    };
    Ok(auscult_audio::resample(audio, rate)?.samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_models_channel_is_the_one_heard() {
        // Two channels at 16 kHz: silence on channel 0, a constant 0.5 on channel 1.
        let samples: Vec<f32> = (0..3_200)
            .map(|i| if i % 2 == 0 { 0.0 } else { 0.5 })
            .collect();
        let bytes = auscult_frame::encode_f32le(&samples);
        let frame = FrameAudio {
            sample_rate_hz: 16_000,
            channels: 2,
            encoding: SampleEncoding::F32le,
            samples: &bytes,
        };
        let mean = |choice| {
            let heard = model_audio(&frame, choice, 16_000).expect("audio");
            assert_eq!(heard.len(), 1_600);
            heard.iter().sum::<f32>() / heard.len() as f32
        };
        assert!(mean(ChannelChoice::First).abs() < 1e-6);
        assert!((mean(ChannelChoice::Index(1)) - 0.5).abs() < 1e-6);
        assert!((mean(ChannelChoice::MixDown) - 0.25).abs() < 1e-6);
        let missing = model_audio(&frame, ChannelChoice::Index(2), 16_000);
        assert!(
            missing.as_ref().is_err_and(|e| e.contains("channel 2")),
            "{missing:?}"
        );
    }
}
