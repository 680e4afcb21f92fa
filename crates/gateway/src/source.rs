//! Where a gateway's frames come from: a deterministic synthetic signal, or WAV recordings cut into frames.
//! Sensors take turns, so N sensors produce their sequence numbers in lockstep as real gateways do.

use std::{
    path::{Path, PathBuf},
    time::SystemTime,
};

use auscult_frame::{SampleEncoding, encode_f32le, encode_pcm_s16le};
use auscult_proto::ingest::v1 as pb;
use bytes::Bytes;

/// What can go wrong reading recordings.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: {problem}")]
    Wav { path: String, problem: String },
    #[error("{path}: no WAV files found")]
    Empty { path: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// A finite sequence of frames.
pub trait FrameSource: Send {
    /// The next frame, or `None` when the source is exhausted.
    fn next_frame(&mut self) -> Result<Option<pb::Frame>, SourceError>;
    /// How many frames the source yields in total.
    fn total(&self) -> u64;
}

/// The identity every generated frame carries.
#[derive(Debug, Clone)]
pub struct Identity {
    pub device_id: String,
    /// Sensor ids, in the order they take turns.
    pub sensors: Vec<String>,
    pub stream_epoch: u64,
}

impl Identity {
    /// Which sensor's turn the `index`-th frame of a source is, and its sequence number; `None` past
    /// `frames_per_sensor` rounds (or without sensors).
    fn turn(&self, index: u64, frames_per_sensor: u64) -> Option<(usize, u64)> {
        let sensors = self.sensors.len() as u64;
        if sensors == 0 || index >= frames_per_sensor * sensors {
            return None;
        }
        Some((usize::try_from(index % sensors).ok()?, index / sensors))
    }

    /// A frame of this identity's `sensor`, captured now.
    fn frame(
        &self,
        sensor: usize,
        seq: u64,
        sample_rate_hz: u32,
        channels: u16,
        encoding: SampleEncoding,
        samples: Bytes,
    ) -> pb::Frame {
        pb::Frame {
            device_id: self.device_id.clone(),
            sensor_id: self.sensors[sensor].clone(),
            stream_epoch: self.stream_epoch,
            seq,
            captured_at: Some(auscult_proto::system_time_to_timestamp(SystemTime::now())),
            sample_rate_hz,
            channels: u32::from(channels),
            encoding: auscult_proto::encoding_to_proto(encoding).into(),
            samples,
            traceparent: String::new(),
            sent_at: None,
        }
    }
}

/// A deterministic test signal: each sensor hums at its own frequency over seeded noise, so any frame can be
/// regenerated from (seed, sensor index, seq) — that is how tests check stored frames byte for byte.
#[derive(Debug, Clone)]
pub struct SyntheticSource {
    pub identity: Identity,
    pub frames_per_sensor: u64,
    pub sample_rate_hz: u32,
    pub samples_per_frame: usize,
    pub encoding: SampleEncoding,
    pub seed: u64,
    next: u64,
}

impl SyntheticSource {
    /// One-second 16 kHz PCM16 mono frames, the typical gateway frame.
    pub fn new(identity: Identity, frames_per_sensor: u64, seed: u64) -> Self {
        Self {
            identity,
            frames_per_sensor,
            sample_rate_hz: 16_000,
            samples_per_frame: 16_000,
            encoding: SampleEncoding::PcmS16le,
            seed,
            next: 0,
        }
    }

    /// The encoded samples of frame `seq` of sensor `sensor`.
    pub fn samples(&self, sensor: usize, seq: u64) -> Vec<u8> {
        let mut rng = SplitMix64(
            self.seed ^ (sensor as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seq.rotate_left(32),
        );
        #[allow(clippy::cast_precision_loss)]
        let hz = 120.0 * (sensor % 16 + 1) as f32;
        #[allow(clippy::cast_precision_loss)]
        let rate = self.sample_rate_hz as f32;
        let signal: Vec<f32> = (0..self.samples_per_frame)
            .map(|i| {
                #[allow(clippy::cast_precision_loss)]
                let t = i as f32 / rate;
                0.3 * (std::f32::consts::TAU * hz * t).sin() + 0.05 * rng.next_signed()
            })
            .collect();
        match self.encoding {
            SampleEncoding::PcmS16le => encode_pcm_s16le(&signal),
            SampleEncoding::F32le => encode_f32le(&signal),
        }
    }

    /// Frame `seq` of sensor `sensor`, captured now.
    pub fn frame(&self, sensor: usize, seq: u64) -> pb::Frame {
        let samples = Bytes::from(self.samples(sensor, seq));
        self.identity
            .frame(sensor, seq, self.sample_rate_hz, 1, self.encoding, samples)
    }
}

impl FrameSource for SyntheticSource {
    fn next_frame(&mut self) -> Result<Option<pb::Frame>, SourceError> {
        let Some((sensor, seq)) = self.identity.turn(self.next, self.frames_per_sensor) else {
            return Ok(None);
        };
        self.next += 1;
        Ok(Some(self.frame(sensor, seq)))
    }

    fn total(&self) -> u64 {
        self.frames_per_sensor * self.identity.sensors.len() as u64
    }
}

/// Frames prepared in advance, so that producing them costs nothing while something is being measured.
#[derive(Debug, Clone)]
pub struct PreparedSource {
    frames: std::collections::VecDeque<pb::Frame>,
    total: u64,
}

impl PreparedSource {
    /// Takes every frame of `source` now.
    pub fn drain(mut source: impl FrameSource) -> Result<Self, SourceError> {
        let mut frames =
            std::collections::VecDeque::with_capacity(usize::try_from(source.total()).unwrap_or(0));
        while let Some(frame) = source.next_frame()? {
            frames.push_back(frame);
        }
        Ok(Self {
            total: frames.len() as u64,
            frames,
        })
    }

    /// Keeps only the first `len` frames.
    pub fn truncate(&mut self, len: usize) {
        self.frames.truncate(len);
        self.total = self.frames.len() as u64;
    }

    /// The frames, in order.
    pub fn frames(&self) -> impl Iterator<Item = &pb::Frame> {
        self.frames.iter()
    }
}

impl FrameSource for PreparedSource {
    fn next_frame(&mut self) -> Result<Option<pb::Frame>, SourceError> {
        Ok(self.frames.pop_front())
    }

    fn total(&self) -> u64 {
        self.total
    }
}

/// Recordings cut into frames: sensor i plays file i (mod the number of files), and moves on to the next file
/// when its recording ends, so every sensor sounds like a real microphone on its own machine.
#[derive(Debug)]
pub struct WavSource {
    identity: Identity,
    files: Vec<PathBuf>,
    frames_per_sensor: u64,
    frame_seconds: f64,
    sensors: Vec<SensorCursor>,
    next: u64,
}

#[derive(Debug, Default)]
struct SensorCursor {
    file_index: usize,
    clip: Option<Clip>,
}

#[derive(Debug)]
struct Clip {
    sample_rate_hz: u32,
    channels: u16,
    encoding: SampleEncoding,
    /// Encoded interleaved samples of the whole file.
    data: Bytes,
    offset: usize,
}

impl WavSource {
    /// `paths` are WAV files or folders (searched recursively, in name order).
    pub fn new(
        identity: Identity,
        paths: &[PathBuf],
        frames_per_sensor: u64,
        frame_seconds: f64,
    ) -> Result<Self, SourceError> {
        let mut files = Vec::new();
        for path in paths {
            collect_wavs(path, &mut files)?;
        }
        if files.is_empty() {
            return Err(SourceError::Empty {
                path: paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let sensors = (0..identity.sensors.len())
            .map(|i| SensorCursor {
                file_index: i % files.len(),
                clip: None,
            })
            .collect();
        Ok(Self {
            identity,
            files,
            frames_per_sensor,
            frame_seconds,
            sensors,
            next: 0,
        })
    }

    /// The recordings in play order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }
}

impl FrameSource for WavSource {
    fn next_frame(&mut self) -> Result<Option<pb::Frame>, SourceError> {
        let Some((sensor, seq)) = self.identity.turn(self.next, self.frames_per_sensor) else {
            return Ok(None);
        };
        self.next += 1;
        let files = &self.files;
        let cursor = &mut self.sensors[sensor];
        // Skip to the next file when the current one has less than a frame left (at most one full round, so
        // a folder of clips shorter than a frame still ends in an error rather than a loop).
        for _ in 0..=files.len() {
            if let Some(clip) = &cursor.clip
                && clip.offset + clip.frame_bytes(self.frame_seconds) <= clip.data.len()
            {
                break;
            }
            if cursor.clip.is_some() {
                cursor.file_index = (cursor.file_index + 1) % files.len();
            }
            cursor.clip = Some(read_clip(&files[cursor.file_index])?);
        }
        let clip = cursor.clip.as_mut().ok_or_else(|| SourceError::Empty {
            path: "recordings".into(),
        })?;
        let frame_bytes = clip.frame_bytes(self.frame_seconds);
        if clip.offset + frame_bytes > clip.data.len() {
            return Err(SourceError::Wav {
                path: files[cursor.file_index].display().to_string(),
                problem: format!(
                    "every recording is shorter than one {}-second frame",
                    self.frame_seconds
                ),
            });
        }
        let samples = clip.data.slice(clip.offset..clip.offset + frame_bytes);
        clip.offset += frame_bytes;
        Ok(Some(self.identity.frame(
            sensor,
            seq,
            clip.sample_rate_hz,
            clip.channels,
            clip.encoding,
            samples,
        )))
    }

    fn total(&self) -> u64 {
        self.frames_per_sensor * self.identity.sensors.len() as u64
    }
}

impl Clip {
    fn frame_bytes(&self, seconds: f64) -> usize {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let samples = (f64::from(self.sample_rate_hz) * seconds).round().max(1.0) as usize;
        samples * usize::from(self.channels) * self.encoding.bytes_per_sample()
    }
}

/// Reads a whole WAV file: 16-bit PCM stays PCM16, 8/24/32-bit PCM and float become f32le. Extensible
/// headers (multi-channel arrays) are read like plain ones.
fn read_clip(path: &Path) -> Result<Clip, SourceError> {
    let wav_error = |problem: String| SourceError::Wav {
        path: path.display().to_string(),
        problem,
    };
    let mut reader = hound::WavReader::open(path).map_err(|e| wav_error(e.to_string()))?;
    let spec = reader.spec();
    let (encoding, data) = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Int, 16) => {
            let samples: Result<Vec<i16>, _> = reader.samples::<i16>().collect();
            let samples = samples.map_err(|e| wav_error(e.to_string()))?;
            (
                SampleEncoding::PcmS16le,
                samples
                    .iter()
                    .flat_map(|s| s.to_le_bytes())
                    .collect::<Vec<u8>>(),
            )
        }
        (hound::SampleFormat::Int, bits @ (8 | 24 | 32)) => {
            let scale = 2f32.powi(i32::from(bits) - 1);
            let samples: Result<Vec<i32>, _> = reader.samples::<i32>().collect();
            #[allow(clippy::cast_precision_loss)]
            let floats: Vec<f32> = samples
                .map_err(|e| wav_error(e.to_string()))?
                .iter()
                .map(|&s| s as f32 / scale)
                .collect();
            (SampleEncoding::F32le, encode_f32le(&floats))
        }
        (hound::SampleFormat::Float, 32) => {
            let samples: Result<Vec<f32>, _> = reader.samples::<f32>().collect();
            (
                SampleEncoding::F32le,
                encode_f32le(&samples.map_err(|e| wav_error(e.to_string()))?),
            )
        }
        (format, bits) => {
            return Err(wav_error(format!(
                "unsupported sample format {format:?} with {bits} bits"
            )));
        }
    };
    if spec.channels == 0 || spec.channels > 16 {
        return Err(wav_error(format!(
            "{} channels; frames carry 1 to 16",
            spec.channels
        )));
    }
    Ok(Clip {
        sample_rate_hz: spec.sample_rate,
        channels: spec.channels,
        encoding,
        data: Bytes::from(data),
        offset: 0,
    })
}

fn collect_wavs(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), SourceError> {
    let io = |source| SourceError::Io {
        path: path.display().to_string(),
        source,
    };
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for entry in entries {
            if entry.is_dir()
                || entry
                    .extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("wav"))
            {
                collect_wavs(&entry, out)?;
            }
        }
        Ok(())
    } else if path.exists() {
        out.push(path.to_path_buf());
        Ok(())
    } else {
        Err(io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such file or folder",
        )))
    }
}

/// A small, fast, seedable generator (SplitMix64): deterministic test signals without a dependency.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn next_signed(&mut self) -> f32 {
        #[allow(clippy::cast_precision_loss)]
        let unit = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        unit * 2.0 - 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(sensors: usize) -> Identity {
        Identity {
            device_id: "gw".into(),
            sensors: (0..sensors).map(|i| format!("mic-{i}")).collect(),
            stream_epoch: 1,
        }
    }

    #[test]
    fn synthetic_frames_take_turns_and_regenerate_identically() {
        let mut source = SyntheticSource::new(identity(3), 2, 7);
        let mut frames = Vec::new();
        while let Some(frame) = source.next_frame().expect("frame") {
            frames.push(frame);
        }
        let order: Vec<_> = frames
            .iter()
            .map(|f| (f.sensor_id.as_str(), f.seq))
            .collect();
        assert_eq!(
            order,
            vec![
                ("mic-0", 0),
                ("mic-1", 0),
                ("mic-2", 0),
                ("mic-0", 1),
                ("mic-1", 1),
                ("mic-2", 1)
            ]
        );
        assert_eq!(frames[4].samples.as_ref(), source.samples(1, 1).as_slice());
        assert_ne!(source.samples(1, 1), source.samples(1, 0));
        assert_eq!(frames[0].samples.len(), 32_000);
    }

    #[test]
    fn wav_files_are_cut_into_frames_per_sensor() {
        let dir = std::env::temp_dir().join(format!("auscult-wav-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("a.wav");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 8_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut writer = hound::WavWriter::create(&path, spec).expect("create");
        for i in 0..(8_000 * 2 * 2 + 10) {
            writer.write_sample((i % 997) as i16).expect("write");
        }
        writer.finalize().expect("finalize");
        let mut source =
            WavSource::new(identity(1), std::slice::from_ref(&dir), 3, 1.0).expect("source");
        let first = source.next_frame().expect("read").expect("frame");
        assert_eq!(
            (first.channels, first.sample_rate_hz, first.samples.len()),
            (2, 8_000, 32_000)
        );
        // The file holds two whole frames; the third starts the file over.
        let second = source.next_frame().expect("read").expect("frame");
        let third = source.next_frame().expect("read").expect("frame");
        assert_eq!(third.samples, first.samples);
        assert_ne!(second.samples, first.samples.slice(..));
        assert!(source.next_frame().expect("read").is_none());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_corrupt_wav_names_its_file() {
        let path = std::env::temp_dir().join(format!("auscult-bad-{}.wav", std::process::id()));
        std::fs::write(&path, b"RIFF\x10\0\0\0WAVEjunk").expect("write");
        let mut source =
            WavSource::new(identity(1), std::slice::from_ref(&path), 1, 1.0).expect("source");
        let error = source.next_frame().unwrap_err().to_string();
        assert!(error.contains(&path.display().to_string()), "{error}");
        std::fs::remove_file(&path).expect("cleanup");
    }
}
