//! The analysis service's core. [`ScoringPool`] scores audio on dedicated threads — the CNN costs
//! milliseconds per window, far too long for the async runtime — behind a bounded queue, so a burst
//! is refused ([`ScoreError::Busy`]) rather than buffered without limit; and it follows the active
//! model: a swapped model serves every job that starts after the swap, while jobs already running
//! finish on the model they started with, so no request is dropped.

mod audio;
pub mod grpc;
mod pool;
mod service;
mod settings;

pub use audio::{FrameAudio, model_audio};
pub use pool::{SCORING_PANICS_TOTAL, ScoreError, ScoreInput, Scored, Scorer, ScoringPool, score};
pub use service::{AnalysisError, Listeners, run};
pub use settings::{InvalidSetting, Settings};
