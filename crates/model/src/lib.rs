//! Hearing faults: a VGG-style CNN over log-mel windows, per-machine statistics of normal sound,
//! calibrated thresholds, and the model file that carries them.
//!
//! - [`network`]: the burn network (classification head + embedding);
//! - [`train`]: training with a file-level validation split and early stopping;
//! - [`stats`], [`profile`], [`calibrate`]: what normal sounds like, per machine, and where the
//!   threshold lies — fitted on normal sound only, sharpened by labelled faults where present;
//! - [`detector`]: a loaded model that turns windows into verdicts with explanations;
//! - [`evaluate`]: the DCASE measures on labelled recordings; [`enroll`]: onboarding machines, and
//!   [`kept`]: the normal recordings a profile keeps so that enrolling more refits on all of them;
//! - [`dataset`]: clips in memory and content-based splits; [`file`]: the model file.

pub mod assessment;
pub mod calibrate;
mod conv3x3;
pub mod dataset;
pub mod detector;
pub mod enroll;
pub mod evaluate;
pub mod features;
pub mod file;
pub mod inference;
pub mod info;
pub mod kept;
pub mod metrics;
pub mod network;
pub mod profile;
pub mod protocol;
pub mod shipped;
pub mod stats;
pub mod stream;
pub mod train;

pub use assessment::{Assessment, Verdict};
pub use dataset::{Clip, MachineKey};
pub use detector::Detector;
pub use inference::Inference;
pub use stream::WindowSummary;

use std::path::PathBuf;

/// The device models run on: burn's pure-Rust CPU backend, the fastest on CPUs without a GPU.
pub fn default_device() -> burn::prelude::Device {
    burn::prelude::Device::flex()
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid model file: {0}")]
    Format(String),
    #[error("no complete window: the recording is shorter than one window")]
    NoWindows,
    #[error(
        "unknown machine {0}: the model has no profile for it or its machine type; enrol it first (`auscult enroll`)"
    )]
    UnknownMachine(String),
    #[error(
        "unknown machine {machine}: the model knows its type only as {known}, and one machine's normal sound is not another's; enrol it first (`auscult enroll`)"
    )]
    UnenrolledMachine { machine: String, known: String },
    #[error(transparent)]
    Fit(#[from] stats::FitError),
    #[error("cannot train: {0}")]
    Training(String),
}
