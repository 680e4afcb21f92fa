//! WAV decoding: 8/16/24/32-bit integer PCM and 32-bit float, plain or `WAVE_FORMAT_EXTENSIBLE`
//! headers, any channel count within limits.

use std::path::Path;

use crate::{Audio, AudioError, AudioLimits, ChannelChoice};

/// Decodes a WAV file into mono audio at its own sample rate.
pub fn read_wav(
    path: &Path,
    channel: ChannelChoice,
    limits: AudioLimits,
) -> Result<Audio, AudioError> {
    let file = std::fs::File::open(path)
        .map_err(|e| AudioError::new(path, describe(&hound::Error::IoError(e))))?;
    parse_wav(std::io::BufReader::new(file), path, channel, limits)
}

/// Decodes WAV bytes from `source` (named `path` in errors) into mono audio at its own sample rate.
pub fn parse_wav<R: std::io::Read>(
    source: R,
    path: &Path,
    channel: ChannelChoice,
    limits: AudioLimits,
) -> Result<Audio, AudioError> {
    let reader = hound::WavReader::new(source).map_err(|e| AudioError::new(path, describe(&e)))?;
    let spec = reader.spec();
    if spec.channels == 0 || spec.channels > limits.max_channels {
        return Err(AudioError::new(
            path,
            format!(
                "{} channels (accepted: 1 to {})",
                spec.channels, limits.max_channels
            ),
        ));
    }
    if spec.sample_rate < 1000 || spec.sample_rate > 384_000 {
        return Err(AudioError::new(
            path,
            format!(
                "sample rate {} Hz (accepted: 1 kHz to 384 kHz)",
                spec.sample_rate
            ),
        ));
    }
    let channels = usize::from(spec.channels);
    let frames = reader.len() as usize / channels;
    let duration_s = frames as f64 / f64::from(spec.sample_rate);
    if duration_s > limits.max_duration_s {
        return Err(AudioError::new(
            path,
            format!(
                "{duration_s:.0} s long (the limit is {:.0} s)",
                limits.max_duration_s
            ),
        ));
    }
    if frames == 0 {
        return Err(AudioError::new(path, "no audio samples"));
    }
    let pick = match channel {
        ChannelChoice::First => Some(0),
        ChannelChoice::Index(index) if usize::from(index) < channels => Some(usize::from(index)),
        ChannelChoice::Index(index) => {
            return Err(AudioError::new(
                path,
                format!("channel {index} requested but the file has {channels}"),
            ));
        }
        ChannelChoice::MixDown => None,
    };

    let interleaved = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Float, 32) => collect(path, reader.into_samples::<f32>(), |s| s)?,
        (hound::SampleFormat::Int, bits @ 8..=32) => {
            let scale = 1.0 / (1_u64 << (bits - 1)) as f32;
            collect(path, reader.into_samples::<i32>(), |s| s as f32 * scale)?
        }
        (format, bits) => {
            return Err(AudioError::new(
                path,
                format!("unsupported sample format: {bits}-bit {format:?}"),
            ));
        }
    };
    if interleaved.len() < frames * channels {
        return Err(AudioError::new(
            path,
            format!(
                "truncated: the header promises {} samples, the file holds {}",
                frames * channels,
                interleaved.len()
            ),
        ));
    }
    let samples = match pick {
        Some(index) => interleaved
            .chunks_exact(channels)
            .map(|frame| frame[index])
            .collect(),
        None => {
            let scale = 1.0 / channels as f32;
            interleaved
                .chunks_exact(channels)
                .map(|frame| frame.iter().sum::<f32>() * scale)
                .collect()
        }
    };
    Ok(Audio {
        sample_rate: spec.sample_rate,
        samples,
    })
}

fn collect<S, R: std::io::Read>(
    path: &Path,
    samples: hound::WavIntoSamples<R, S>,
    convert: impl Fn(S) -> f32,
) -> Result<Vec<f32>, AudioError>
where
    S: hound::Sample,
{
    let mut out = Vec::with_capacity(samples.len());
    for sample in samples {
        match sample {
            Ok(value) => out.push(convert(value)),
            // hound reports a short read as UnexpectedEof or as "Failed to read enough bytes".
            Err(hound::Error::IoError(e))
                if e.kind() == std::io::ErrorKind::UnexpectedEof
                    || e.to_string().contains("enough bytes") =>
            {
                return Err(AudioError::new(
                    path,
                    format!("truncated: the data ends after {} samples", out.len()),
                ));
            }
            Err(e) => return Err(AudioError::new(path, describe(&e))),
        }
    }
    Ok(out)
}

fn describe(error: &hound::Error) -> String {
    match error {
        hound::Error::IoError(e) if e.kind() == std::io::ErrorKind::NotFound => {
            "no such file".to_owned()
        }
        hound::Error::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            "truncated: the file ends inside its header".to_owned()
        }
        hound::Error::IoError(e) => format!("cannot read: {e}"),
        hound::Error::FormatError(what) => format!("not a valid WAV file: {what}"),
        hound::Error::Unsupported => {
            "unsupported WAV encoding (compressed or unusual layout)".into()
        }
        other => format!("cannot decode: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, channels: u16, bits: u16, float: bool, frames: &[Vec<f64>]) {
        let spec = hound::WavSpec {
            channels,
            sample_rate: 16_000,
            bits_per_sample: bits,
            sample_format: if float {
                hound::SampleFormat::Float
            } else {
                hound::SampleFormat::Int
            },
        };
        let mut writer = hound::WavWriter::create(path, spec).expect("create");
        for frame in frames {
            for &value in frame {
                if float {
                    writer.write_sample(value as f32).expect("write");
                } else {
                    let full = ((1_i64 << (bits - 1)) - 1) as f64;
                    writer
                        .write_sample((value * full).round() as i32)
                        .expect("write");
                }
            }
        }
        writer.finalize().expect("finalize");
    }

    fn frames(channels: usize) -> Vec<Vec<f64>> {
        (0..1600)
            .map(|i| {
                (0..channels)
                    .map(|c| ((i + c * 7) as f64 * 0.01).sin() * 0.5)
                    .collect()
            })
            .collect()
    }

    #[test]
    fn decodes_every_integer_width_and_float() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reference = frames(1);
        for (bits, float, tolerance) in [
            (16, false, 1e-4),
            (24, false, 1e-6),
            (32, false, 1e-6),
            (32, true, 1e-7),
        ] {
            let path = dir.path().join(format!("{bits}-{float}.wav"));
            write(&path, 1, bits, float, &reference);
            let audio =
                read_wav(&path, ChannelChoice::First, AudioLimits::default()).expect("read");
            assert_eq!(audio.samples.len(), reference.len(), "{bits}-bit");
            for (got, want) in audio.samples.iter().zip(&reference) {
                assert!(
                    (f64::from(*got) - want[0]).abs() < tolerance,
                    "{bits}-bit float={float}"
                );
            }
        }
    }

    #[test]
    fn picks_or_mixes_channels_of_a_multichannel_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("eight.wav");
        let reference = frames(8);
        write(&path, 8, 16, false, &reference);
        let third = read_wav(&path, ChannelChoice::Index(3), AudioLimits::default()).expect("read");
        let mixed = read_wav(&path, ChannelChoice::MixDown, AudioLimits::default()).expect("read");
        for (i, frame) in reference.iter().enumerate() {
            assert!((f64::from(third.samples[i]) - frame[3]).abs() < 1e-4);
            let mean = frame.iter().sum::<f64>() / 8.0;
            assert!((f64::from(mixed.samples[i]) - mean).abs() < 1e-4);
        }
        let error = read_wav(&path, ChannelChoice::Index(8), AudioLimits::default())
            .expect_err("channel 8 of 8");
        assert!(
            error
                .to_string()
                .contains("channel 8 requested but the file has 8"),
            "{error}"
        );
    }

    #[test]
    fn corrupt_and_truncated_files_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("good.wav");
        write(&good, 1, 16, false, &frames(1));
        let bytes = std::fs::read(&good).expect("read");

        let truncated = dir.path().join("truncated.wav");
        std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
        let error = read_wav(&truncated, ChannelChoice::First, AudioLimits::default())
            .expect_err("truncated");
        assert!(
            error
                .to_string()
                .starts_with(&truncated.display().to_string()),
            "{error}"
        );
        assert!(error.problem.contains("truncated"), "{error}");

        let header_only = dir.path().join("header.wav");
        std::fs::write(&header_only, &bytes[..20]).expect("write");
        let error = read_wav(&header_only, ChannelChoice::First, AudioLimits::default())
            .expect_err("cut header");
        assert!(error.path.ends_with("header.wav"), "{error}");

        let text = dir.path().join("notes.wav");
        std::fs::write(&text, b"these are not the samples you are looking for").expect("write");
        let error =
            read_wav(&text, ChannelChoice::First, AudioLimits::default()).expect_err("text");
        assert!(error.problem.contains("not a valid WAV"), "{error}");

        let missing = dir.path().join("missing.wav");
        let error =
            read_wav(&missing, ChannelChoice::First, AudioLimits::default()).expect_err("missing");
        assert_eq!(error.problem, "no such file");
    }

    #[test]
    fn refuses_files_beyond_the_limits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("long.wav");
        write(&path, 1, 16, false, &frames(1));
        let limits = AudioLimits {
            max_duration_s: 0.05,
            ..AudioLimits::default()
        };
        let error = read_wav(&path, ChannelChoice::First, limits).expect_err("too long");
        assert!(error.problem.contains("limit"), "{error}");
    }
}
