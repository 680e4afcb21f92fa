//! A microphone frame: one contiguous slice of audio from one sensor of one gateway device, and the rules that
//! decide whether ingest accepts it.
//!
//! Frames arrive from the network as [`RawFrame`]s — every field as the gateway sent it — and become
//! [`Frame`]s only through [`RawFrame::validate`], so code holding a `Frame` never re-checks it. Nothing here
//! does I/O.

mod codec;
pub mod flac;
mod level;
mod validate;

use std::time::SystemTime;

use bytes::Bytes;

pub use codec::{decode_interleaved, encode_f32le, encode_pcm_s16le};
pub use level::Level;
pub use validate::{
    IdentifierProblem, InvalidFrame, Limits, MAX_CHANNELS, MAX_F32_SAMPLE, MAX_ID_BYTES,
    MAX_SAMPLE_RATE_HZ, MIN_SAMPLE_RATE_HZ, RawFrame, check_identifier,
};

/// How the bytes of a frame encode audio; samples are interleaved by channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SampleEncoding {
    /// Signed 16-bit little-endian integers, full scale ±32768.
    PcmS16le,
    /// IEEE-754 32-bit little-endian floats, full scale ±1.0, always finite.
    F32le,
}

impl SampleEncoding {
    /// Bytes per sample of one channel.
    pub const fn bytes_per_sample(self) -> usize {
        match self {
            Self::PcmS16le => 2,
            Self::F32le => 4,
        }
    }

    /// The name stored in the database and shown to operators.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::PcmS16le => "pcm_s16le",
            Self::F32le => "f32le",
        }
    }

    /// Parses a name produced by [`SampleEncoding::as_str`].
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "pcm_s16le" => Some(Self::PcmS16le),
            "f32le" => Some(Self::F32le),
            _ => None,
        }
    }
}

/// What identifies a frame for ever: a frame sent twice under one key is stored once.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrameKey {
    pub device_id: String,
    pub sensor_id: String,
    /// Changes when the gateway's sequence counter restarts, so old sequence numbers never collide with new.
    pub stream_epoch: i64,
    pub seq: i64,
}

/// A frame that passed validation.
#[derive(Debug, Clone)]
pub struct Frame {
    pub key: FrameKey,
    pub captured_at: SystemTime,
    pub sample_rate_hz: u32,
    pub channels: u16,
    pub encoding: SampleEncoding,
    pub samples: Bytes,
    /// Loudness summary, computed during validation because validation reads every sample anyway.
    pub level: Level,
    /// SHA-256 of `samples`: stored beside them so that a resend can be told apart from a different frame
    /// reusing the same key, and so that storage can be verified end to end (against the decoded samples).
    pub samples_sha256: [u8; 32],
    /// The samples compressed for storage, when ingest compresses them ([`Frame::compress_for_storage`]):
    /// stored instead of `samples`, which stay exactly what was received.
    pub flac: Option<Bytes>,
    /// W3C `traceparent` of the span that received the frame, when its trace is exported: stored with the
    /// frame's analysis job so that scoring joins the trace. Set by the receiver, never by validation.
    pub trace_parent: Option<String>,
}

impl Frame {
    /// Compresses 16-bit PCM samples for storage (lossless FLAC); float samples, and frames too short for
    /// FLAC (under 16 samples per channel), are stored as received.
    pub fn compress_for_storage(&mut self) -> Result<(), flac::FlacError> {
        if self.encoding == SampleEncoding::PcmS16le
            && self.flac.is_none()
            && flac::compressible(self.sample_count())
        {
            self.flac = Some(Bytes::from(flac::encode_pcm_s16le(
                &self.samples,
                self.channels,
                self.sample_rate_hz,
            )?));
        }
        Ok(())
    }

    /// What is stored for this frame: its bytes, and their encoding as the `encoding` column names it.
    pub fn stored_samples(&self) -> (&[u8], &'static str) {
        match &self.flac {
            Some(flac) => (flac, "flac"),
            None => (&self.samples, self.encoding.as_str()),
        }
    }

    /// Number of sample frames (samples per channel).
    pub fn sample_count(&self) -> usize {
        self.samples.len() / (self.encoding.bytes_per_sample() * usize::from(self.channels))
    }
}
