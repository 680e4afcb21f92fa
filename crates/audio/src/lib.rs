//! Reading machine recordings into mono `f32` audio at the model's sample rate.
//!
//! Recordings come from many places: single microphones (16-bit mono), microphone arrays
//! (8-channel `WAVE_FORMAT_EXTENSIBLE`), studio recorders (24-bit, 32-bit float). Everything the
//! detector sees goes through [`load`], which decodes the file, picks or mixes channels and
//! resamples, and answers every problem with an error that names the file.
//!
//! [`manifest`] reads the labelled dataset folders that training and evaluation work on.

pub mod manifest;
mod resample;
mod wav;

use std::path::PathBuf;

pub use resample::resample;
pub use wav::{parse_wav, read_wav};

/// Mono audio, samples in [-1, 1] (float files may exceed it; nothing clips them here).
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    pub sample_rate: u32,
    pub samples: Vec<f32>,
}

impl Audio {
    pub fn duration_s(&self) -> f64 {
        self.samples.len() as f64 / f64::from(self.sample_rate)
    }
}

/// How several recorded channels become the one the detector listens to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChannelChoice {
    /// One microphone, counted from 0. Microphone arrays are usually judged on channel 0, and a
    /// single microphone keeps the fault's sound sharper than an average of eight positions.
    #[default]
    First,
    Index(u16),
    /// The mean of all channels.
    MixDown,
}

impl std::str::FromStr for ChannelChoice {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "mix" | "mixdown" => Ok(Self::MixDown),
            "first" => Ok(Self::First),
            other => other
                .parse::<u16>()
                .map(Self::Index)
                .map_err(|_| format!("channel must be a number, `first` or `mix`, not `{other}`")),
        }
    }
}

/// What went wrong with which file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct AudioError {
    pub path: PathBuf,
    pub problem: String,
}

impl AudioError {
    pub(crate) fn new(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            problem: problem.into(),
        }
    }
}

/// Limits on what a file may claim, so a corrupt header cannot ask for gigabytes.
#[derive(Debug, Clone, Copy)]
pub struct AudioLimits {
    pub max_duration_s: f64,
    pub max_channels: u16,
}

impl Default for AudioLimits {
    fn default() -> Self {
        Self {
            max_duration_s: 600.0,
            max_channels: 64,
        }
    }
}

/// Reads `path`, keeps the chosen channel and resamples to `sample_rate`.
pub fn load(
    path: &std::path::Path,
    channel: ChannelChoice,
    sample_rate: u32,
    limits: AudioLimits,
) -> Result<Audio, AudioError> {
    let audio = read_wav(path, channel, limits)?;
    resample(audio, sample_rate).map_err(|problem| AudioError::new(path, problem))
}
