//! What the model's integration tests share: the sample recordings, and a network small enough to
//! train on them in seconds.

use std::path::PathBuf;

use auscult_audio::ChannelChoice;
use auscult_audio::manifest;
use auscult_model::train::TrainConfig;
use auscult_model::{Clip, dataset};

/// The sample recordings in `tests/data/recordings`, through channel 0 at 16 kHz.
pub fn samples() -> Vec<Clip> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/recordings");
    let recordings = manifest::discover(&dir).expect("sample manifest");
    dataset::load_clips(&recordings, ChannelChoice::First, 16_000, &|| {}).expect("sample clips")
}

/// A tiny network trained for two epochs.
pub fn tiny() -> TrainConfig {
    TrainConfig {
        max_epochs: 2,
        channels: [4, 8, 8],
        hidden: [32, 32, 16],
        validation_fraction: 0.34,
        ..TrainConfig::default()
    }
}
