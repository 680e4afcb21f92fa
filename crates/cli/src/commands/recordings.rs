//! What the model commands share: loading labelled recordings with progress, and finding the model.

use std::path::{Path, PathBuf};

use anyhow::Context;
use auscult_audio::ChannelChoice;
use auscult_audio::manifest::{self, Recording};
use auscult_model::{Clip, Detector};
use indicatif::{ProgressBar, ProgressStyle};

/// The model to use: `--model`, else the one built into this binary.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArg {
    /// Model file; without it, the default model shipped with auscult.
    #[arg(long, value_name = "MODEL")]
    pub model: Option<PathBuf>,
}

impl ModelArg {
    pub fn load(&self) -> anyhow::Result<Detector> {
        match &self.model {
            Some(path) => {
                Detector::load(path).with_context(|| format!("loading model {}", path.display()))
            }
            None => {
                let bytes = auscult_model::shipped::bytes().context(
                    "this build has no default model: pass --model MODEL (train one with `auscult train`)",
                )?;
                Detector::from_bytes(bytes, &auscult_model::default_device())
                    .context("loading the default model")
            }
        }
    }
}

/// Every recording listed under `dirs`.
pub fn discover(dirs: &[PathBuf]) -> anyhow::Result<Vec<Recording>> {
    let mut all = Vec::new();
    for dir in dirs {
        all.extend(manifest::discover(dir)?);
    }
    Ok(all)
}

/// Decodes recordings on all cores with a progress bar on stderr.
pub fn load(
    recordings: &[Recording],
    channel: ChannelChoice,
    sample_rate: u32,
    quiet: bool,
) -> anyhow::Result<Vec<Clip>> {
    let bar = bar(recordings.len() as u64, "decoding", quiet);
    let clips =
        auscult_model::dataset::load_clips(recordings, channel, sample_rate, &|| bar.inc(1))?;
    bar.finish_and_clear();
    Ok(clips)
}

/// A progress bar on stderr, hidden when asked or when stderr is not a terminal.
pub fn bar(len: u64, what: &str, quiet: bool) -> ProgressBar {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(len)
    };
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{what:>9} [{{elapsed_precise}}] {{bar:40}} {{pos}}/{{len}} {{msg}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// The channel the model listens to, unless the command line says otherwise.
pub fn channel(
    detector: &Detector,
    choice: Option<ChannelChoice>,
) -> anyhow::Result<ChannelChoice> {
    match choice {
        Some(choice) => Ok(choice),
        None => detector
            .info
            .channel
            .parse()
            .map_err(|e: String| anyhow::anyhow!("model metadata: {e}")),
    }
}

/// A path for messages, relative to the current directory when possible.
pub fn shown(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf())
        .display()
        .to_string()
}

/// Rounds for JSON: figures with more digits than anyone can use only hide what matters.
pub fn round(value: f64, digits: i32) -> f64 {
    let scale = 10_f64.powi(digits);
    (value * scale).round() / scale
}

/// A profile's false-alarm check for JSON: `{flagged, clips, rate}`, or null where the profile
/// has none (a threshold set by fault labels).
pub fn false_alarm_check_json(
    check: Option<auscult_model::profile::FalseAlarmCheck>,
) -> serde_json::Value {
    check.map_or(serde_json::Value::Null, |c| {
        serde_json::json!({
            "flagged": c.flagged,
            "clips": c.clips,
            "rate": round(c.rate(), 4),
        })
    })
}

/// A profile's false-alarm check in words, as `enroll` and `evaluate --enroll` report it.
pub fn false_alarm_check_text(check: auscult_model::profile::FalseAlarmCheck) -> String {
    format!(
        "{} of its {} normal recordings are out of the ranges fitted without each ({:.1} %)",
        check.flagged,
        check.clips,
        check.rate() * 100.0
    )
}
