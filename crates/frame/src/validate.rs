//! The rules a frame must pass before it is stored. Each broken rule has its own [`InvalidFrame`] variant, so
//! the gateway learns exactly what to fix and metrics can count each kind.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::{Frame, FrameKey, Level, SampleEncoding};

/// Longest device or sensor id, in bytes: ids are keys in PostgreSQL and Elasticsearch, not payloads.
pub const MAX_ID_BYTES: usize = 128;
/// Lowest accepted sample rate: below this nothing audible (or vibrational of interest) is left.
pub const MIN_SAMPLE_RATE_HZ: u32 = 1_000;
/// Highest accepted sample rate: the ceiling of professional audio converters.
pub const MAX_SAMPLE_RATE_HZ: u32 = 192_000;
/// Most interleaved channels in one frame: microphone arrays on gateways have up to 16.
pub const MAX_CHANNELS: u32 = 16;
/// Largest magnitude of an f32le sample. Full scale is 1.0, and gateways that send PCM-scaled floats stay
/// below 32 768; far larger values are a broken converter, and squared and summed over a spectrogram's
/// windows they would overflow to infinity.
pub const MAX_F32_SAMPLE: f32 = 1.0e6;

/// Limits that depend on the deployment rather than on physics.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How far in the future a capture time may lie: gateway clocks drift, but a frame from next week is a
    /// broken clock, and storing it would corrupt every time-based view.
    pub max_clock_skew: Duration,
    /// How old a frame may be: gateways buffer through LTE outages and send late, but not forever.
    pub max_frame_age: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_clock_skew: Duration::from_secs(300),
            max_frame_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Every field of a frame as the gateway sent it, before any check.
#[derive(Debug, Clone)]
pub struct RawFrame {
    pub device_id: String,
    pub sensor_id: String,
    pub stream_epoch: u64,
    pub seq: u64,
    /// `None` when the gateway sent no (or an unrepresentable) capture time.
    pub captured_at: Option<SystemTime>,
    pub sample_rate_hz: u32,
    pub channels: u32,
    /// `None` when the encoding is unspecified or unknown; the wire value is kept for the error message.
    pub encoding: Result<SampleEncoding, i32>,
    pub samples: Bytes,
}

/// Why a frame is refused. Refusal is final: the same frame sent again is refused again.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidFrame {
    #[error("device_id {0}")]
    InvalidDeviceId(IdentifierProblem),
    #[error("sensor_id {0}")]
    InvalidSensorId(IdentifierProblem),
    #[error("{field} {value} exceeds 2^63-1")]
    SequenceOutOfRange { field: &'static str, value: u64 },
    #[error("captured_at is missing or not a valid timestamp")]
    MissingCaptureTime,
    #[error(
        "captured_at is {ahead:?} ahead of server time, more than the allowed skew of {allowed:?}"
    )]
    CaptureTimeInFuture { ahead: Duration, allowed: Duration },
    #[error("captured_at is {age:?} old, older than the maximum frame age of {allowed:?}")]
    CaptureTimeTooOld { age: Duration, allowed: Duration },
    #[error("sample_rate_hz {0} outside {MIN_SAMPLE_RATE_HZ}..={MAX_SAMPLE_RATE_HZ}")]
    SampleRateOutOfRange(u32),
    #[error("channels {0} outside 1..={MAX_CHANNELS}")]
    ChannelsOutOfRange(u32),
    #[error("encoding {0} is unspecified or unsupported")]
    UnsupportedEncoding(i32),
    #[error(
        "samples hold {len} bytes, not a positive multiple of {frame_bytes} ({encoding} × {channels} channels)"
    )]
    PayloadLengthMismatch {
        len: usize,
        frame_bytes: usize,
        encoding: &'static str,
        channels: u32,
    },
    #[error("sample {index} is not finite")]
    NonFiniteSample { index: usize },
    #[error("sample {index} is {value}, beyond ±{MAX_F32_SAMPLE}")]
    SampleOutOfRange { index: usize, value: f32 },
}

/// What is wrong with a device or sensor id.
///
/// The alphabet: 1 to [`MAX_ID_BYTES`] bytes of UTF-8 made of printable characters — letters and digits
/// of any script, punctuation, symbols and inner spaces. Refused: control characters (NUL among them,
/// which PostgreSQL cannot store in text), invisible format characters (zero-width and bidirectional
/// controls, which make two different ids look alike on a dashboard), line and paragraph separators,
/// whitespace other than the plain space, and a space at either end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentifierProblem {
    Length(usize),
    Character { byte: usize, code_point: u32 },
    OuterSpace,
}

impl std::fmt::Display for IdentifierProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Length(len) => write!(f, "must be 1..={MAX_ID_BYTES} bytes, got {len}"),
            Self::Character { byte, code_point } => write!(
                f,
                "holds U+{code_point:04X} at byte {byte}: control, format and separator characters are not allowed"
            ),
            Self::OuterSpace => write!(f, "must not begin or end with a space"),
        }
    }
}

/// Checks a device or sensor id against the alphabet of [`IdentifierProblem`].
pub fn check_identifier(id: &str) -> Result<(), IdentifierProblem> {
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(IdentifierProblem::Length(id.len()));
    }
    if let Some((byte, c)) = id.char_indices().find(|(_, c)| !allowed_in_identifier(*c)) {
        return Err(IdentifierProblem::Character {
            byte,
            code_point: u32::from(c),
        });
    }
    if id.starts_with(' ') || id.ends_with(' ') {
        return Err(IdentifierProblem::OuterSpace);
    }
    Ok(())
}

fn allowed_in_identifier(c: char) -> bool {
    let format = matches!(
        u32::from(c),
        0x00AD | 0x061C | 0x180E | 0x200B..=0x200F | 0x2028..=0x202E | 0x2060..=0x2064
            | 0x2066..=0x206F | 0xFEFF | 0xFFF9..=0xFFFB
    );
    !(c.is_control() || format || (c.is_whitespace() && c != ' '))
}

impl RawFrame {
    /// Checks every rule, cheapest first, and computes the frame's level on the way (the one pass over the
    /// samples serves both the finiteness check and the level).
    pub fn validate(self, limits: &Limits, now: SystemTime) -> Result<Frame, InvalidFrame> {
        check_identifier(&self.device_id).map_err(InvalidFrame::InvalidDeviceId)?;
        check_identifier(&self.sensor_id).map_err(InvalidFrame::InvalidSensorId)?;
        let stream_epoch = to_i64("stream_epoch", self.stream_epoch)?;
        let seq = to_i64("seq", self.seq)?;
        let captured_at = self.captured_at.ok_or(InvalidFrame::MissingCaptureTime)?;
        check_capture_time(captured_at, limits, now)?;
        if !(MIN_SAMPLE_RATE_HZ..=MAX_SAMPLE_RATE_HZ).contains(&self.sample_rate_hz) {
            return Err(InvalidFrame::SampleRateOutOfRange(self.sample_rate_hz));
        }
        let channels = u16::try_from(self.channels)
            .ok()
            .filter(|c| (1..=MAX_CHANNELS).contains(&u32::from(*c)))
            .ok_or(InvalidFrame::ChannelsOutOfRange(self.channels))?;
        let encoding = self.encoding.map_err(InvalidFrame::UnsupportedEncoding)?;
        let frame_bytes = encoding.bytes_per_sample() * usize::from(channels);
        if self.samples.is_empty() || !self.samples.len().is_multiple_of(frame_bytes) {
            return Err(InvalidFrame::PayloadLengthMismatch {
                len: self.samples.len(),
                frame_bytes,
                encoding: encoding.as_str(),
                channels: self.channels,
            });
        }
        let level = measure(encoding, &self.samples)?;
        let samples_sha256 = Sha256::digest(&self.samples).into();
        Ok(Frame {
            key: FrameKey {
                device_id: self.device_id,
                sensor_id: self.sensor_id,
                stream_epoch,
                seq,
            },
            captured_at,
            sample_rate_hz: self.sample_rate_hz,
            channels,
            encoding,
            samples: self.samples,
            level,
            samples_sha256,
            flac: None,
            trace_parent: None,
        })
    }
}

fn to_i64(field: &'static str, value: u64) -> Result<i64, InvalidFrame> {
    i64::try_from(value).map_err(|_| InvalidFrame::SequenceOutOfRange { field, value })
}

fn check_capture_time(
    captured_at: SystemTime,
    limits: &Limits,
    now: SystemTime,
) -> Result<(), InvalidFrame> {
    match captured_at.duration_since(now) {
        Ok(ahead) if ahead > limits.max_clock_skew => Err(InvalidFrame::CaptureTimeInFuture {
            ahead,
            allowed: limits.max_clock_skew,
        }),
        Ok(_) => Ok(()),
        Err(behind) if behind.duration() > limits.max_frame_age => {
            Err(InvalidFrame::CaptureTimeTooOld {
                age: behind.duration(),
                allowed: limits.max_frame_age,
            })
        }
        Err(_) => Ok(()),
    }
}

/// One pass over the samples: rejects non-finite floats and sums what the level needs. PCM is summed in
/// integers, which the compiler vectorises: this runs for every frame on the ingest hot path.
fn measure(encoding: SampleEncoding, bytes: &[u8]) -> Result<Level, InvalidFrame> {
    match encoding {
        SampleEncoding::PcmS16le => {
            let mut sum_squares = 0u64;
            let mut peak = 0u32;
            for b in bytes.chunks_exact(2) {
                let v = i32::from(i16::from_le_bytes([b[0], b[1]]));
                sum_squares += u64::from((v * v).unsigned_abs());
                peak = peak.max(v.unsigned_abs());
            }
            let full_scale = 32768.0f64;
            #[allow(clippy::cast_precision_loss)]
            let sum_squares = sum_squares as f64 / (full_scale * full_scale);
            Ok(Level::from_sums(
                sum_squares,
                f64::from(peak) / full_scale,
                bytes.len() / 2,
            ))
        }
        SampleEncoding::F32le => {
            let mut sum_squares = 0.0f64;
            let mut peak = 0.0f32;
            for (index, b) in bytes.chunks_exact(4).enumerate() {
                let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                if !v.is_finite() {
                    return Err(InvalidFrame::NonFiniteSample { index });
                }
                if v.abs() > MAX_F32_SAMPLE {
                    return Err(InvalidFrame::SampleOutOfRange { index, value: v });
                }
                sum_squares += f64::from(v) * f64::from(v);
                peak = peak.max(v.abs());
            }
            Ok(Level::from_sums(
                sum_squares,
                f64::from(peak),
                bytes.len() / 4,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{encode_f32le, encode_pcm_s16le};

    fn good(now: SystemTime) -> RawFrame {
        let tone: Vec<f32> = (0..1600).map(|i| 0.5 * (i as f32 * 0.1).sin()).collect();
        RawFrame {
            device_id: "gw-1".into(),
            sensor_id: "mic-0".into(),
            stream_epoch: 7,
            seq: 42,
            captured_at: Some(now),
            sample_rate_hz: 16_000,
            channels: 1,
            encoding: Ok(SampleEncoding::PcmS16le),
            samples: Bytes::from(encode_pcm_s16le(&tone)),
        }
    }

    fn check(edit: impl FnOnce(&mut RawFrame)) -> Result<Frame, InvalidFrame> {
        let now = SystemTime::now();
        let mut raw = good(now);
        edit(&mut raw);
        raw.validate(&Limits::default(), now)
    }

    #[test]
    fn a_good_frame_passes_with_its_level() {
        let frame = check(|_| {}).expect("valid");
        assert_eq!(frame.key.seq, 42);
        assert_eq!(frame.sample_count(), 1600);
        // A sine at amplitude 0.5: RMS 0.354 → −9.0 dBFS, peak ≈ −6 dBFS, crest ≈ √2.
        assert!(
            (frame.level.rms_dbfs + 9.03).abs() < 0.1,
            "{:?}",
            frame.level
        );
        assert!(
            (frame.level.peak_dbfs + 6.02).abs() < 0.1,
            "{:?}",
            frame.level
        );
        assert!((frame.level.crest_factor - std::f32::consts::SQRT_2).abs() < 0.02);
    }

    #[test]
    fn identifiers_are_printable_text() {
        for good in ["gw-1", "press 7/mic:0", "presse-à-froid", "泵-3", "a.b_c@d"] {
            assert_eq!(check_identifier(good), Ok(()), "{good:?}");
        }
        let refused = [
            ("mic\0", 3, 0x0),
            ("mic\u{7}", 3, 0x7),
            ("mic\n0", 3, 0xA),
            ("mic\t0", 3, 0x9),
            ("a\u{202E}b", 1, 0x202E),
            ("a\u{200B}b", 1, 0x200B),
            ("a\u{2028}b", 1, 0x2028),
            ("\u{FEFF}a", 0, 0xFEFF),
        ];
        for (id, byte, code_point) in refused {
            assert_eq!(
                check_identifier(id),
                Err(IdentifierProblem::Character { byte, code_point }),
                "{id:?}"
            );
        }
        assert_eq!(check_identifier(" mic"), Err(IdentifierProblem::OuterSpace));
        assert_eq!(check_identifier("mic "), Err(IdentifierProblem::OuterSpace));
        assert_eq!(
            check(|f| f.sensor_id = "mic\0".into())
                .unwrap_err()
                .to_string(),
            "sensor_id holds U+0000 at byte 3: control, format and separator characters are not allowed"
        );
    }

    #[test]
    fn float_samples_beyond_the_range_are_refused() {
        let with = |value: f32| {
            check(move |f| {
                let mut samples = vec![0.25f32; 1000];
                samples[10] = value;
                f.encoding = Ok(SampleEncoding::F32le);
                f.samples = Bytes::from(encode_f32le(&samples));
            })
        };
        assert!(with(32_767.0).is_ok());
        assert!(with(-MAX_F32_SAMPLE).is_ok());
        assert_eq!(
            with(3.0e38).unwrap_err(),
            InvalidFrame::SampleOutOfRange {
                index: 10,
                value: 3.0e38
            }
        );
        assert!(matches!(
            with(-1.0e7).unwrap_err(),
            InvalidFrame::SampleOutOfRange { index: 10, .. }
        ));
    }

    #[test]
    fn silence_has_a_finite_floor() {
        let frame = check(|f| f.samples = Bytes::from(vec![0u8; 3200])).expect("valid");
        assert_eq!(frame.level.rms_dbfs, Level::FLOOR_DBFS);
        assert_eq!(frame.level.crest_factor, 0.0);
    }

    #[test]
    fn each_rule_has_its_own_error() {
        assert_eq!(
            check(|f| f.device_id.clear()).unwrap_err(),
            InvalidFrame::InvalidDeviceId(IdentifierProblem::Length(0))
        );
        assert_eq!(
            check(|f| f.sensor_id = "x".repeat(129)).unwrap_err(),
            InvalidFrame::InvalidSensorId(IdentifierProblem::Length(129))
        );
        assert!(matches!(
            check(|f| f.seq = u64::MAX).unwrap_err(),
            InvalidFrame::SequenceOutOfRange { field: "seq", .. }
        ));
        assert!(matches!(
            check(|f| f.stream_epoch = 1 << 63).unwrap_err(),
            InvalidFrame::SequenceOutOfRange {
                field: "stream_epoch",
                ..
            }
        ));
        assert_eq!(
            check(|f| f.captured_at = None).unwrap_err(),
            InvalidFrame::MissingCaptureTime
        );
        assert!(matches!(
            check(|f| f.captured_at = f.captured_at.map(|t| t + Duration::from_secs(3600)))
                .unwrap_err(),
            InvalidFrame::CaptureTimeInFuture { .. }
        ));
        assert!(matches!(
            check(|f| f.captured_at = f.captured_at.map(|t| t - Duration::from_secs(30 * 86_400)))
                .unwrap_err(),
            InvalidFrame::CaptureTimeTooOld { .. }
        ));
        assert_eq!(
            check(|f| f.sample_rate_hz = 999).unwrap_err(),
            InvalidFrame::SampleRateOutOfRange(999)
        );
        assert_eq!(
            check(|f| f.sample_rate_hz = 192_001).unwrap_err(),
            InvalidFrame::SampleRateOutOfRange(192_001)
        );
        assert_eq!(
            check(|f| f.channels = 0).unwrap_err(),
            InvalidFrame::ChannelsOutOfRange(0)
        );
        assert_eq!(
            check(|f| f.channels = 17).unwrap_err(),
            InvalidFrame::ChannelsOutOfRange(17)
        );
        assert_eq!(
            check(|f| f.encoding = Err(0)).unwrap_err(),
            InvalidFrame::UnsupportedEncoding(0)
        );
        assert!(matches!(
            check(|f| f.samples = Bytes::from_static(&[1, 2, 3])).unwrap_err(),
            InvalidFrame::PayloadLengthMismatch {
                len: 3,
                frame_bytes: 2,
                ..
            }
        ));
        assert!(matches!(
            check(|f| f.samples = Bytes::new()).unwrap_err(),
            InvalidFrame::PayloadLengthMismatch { len: 0, .. }
        ));
        // Stereo PCM needs multiples of 4 bytes.
        assert!(matches!(
            check(|f| {
                f.channels = 2;
                f.samples = Bytes::from(vec![0u8; 6]);
            })
            .unwrap_err(),
            InvalidFrame::PayloadLengthMismatch { frame_bytes: 4, .. }
        ));
        let mut floats = vec![0.1f32; 100];
        floats[37] = f32::NAN;
        assert_eq!(
            check(|f| {
                f.encoding = Ok(SampleEncoding::F32le);
                f.samples = Bytes::from(encode_f32le(&floats));
            })
            .unwrap_err(),
            InvalidFrame::NonFiniteSample { index: 37 }
        );
    }

    #[test]
    fn limits_are_inclusive_at_the_edges() {
        assert!(check(|f| f.sample_rate_hz = MIN_SAMPLE_RATE_HZ).is_ok());
        assert!(check(|f| f.sample_rate_hz = MAX_SAMPLE_RATE_HZ).is_ok());
        assert!(check(|f| f.channels = MAX_CHANNELS).is_ok());
        assert!(check(|f| f.device_id = "d".repeat(MAX_ID_BYTES)).is_ok());
        assert!(check(|f| f.seq = i64::MAX as u64).is_ok());
    }
}
