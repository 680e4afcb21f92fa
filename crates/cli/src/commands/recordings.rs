//! What the model commands share: loading labelled recordings with progress, finding the model,
//! and putting a profile's false-alarm check in figures and words.

use std::path::{Path, PathBuf};

use anyhow::Context;
use auscult_audio::ChannelChoice;
use auscult_audio::manifest::{self, Recording};
use auscult_model::profile::FalseAlarmCheck;
use auscult_model::{Clip, Detector};
use auscult_store::AlertRule;
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
pub fn false_alarm_check_json(check: Option<FalseAlarmCheck>) -> serde_json::Value {
    check.map_or(serde_json::Value::Null, |c| {
        serde_json::json!({
            "flagged": c.flagged,
            "clips": c.clips,
            "rate": round(c.rate(), 4),
        })
    })
}

/// A profile's false-alarm check in words, as `enroll` and `evaluate --enroll` report it.
pub fn false_alarm_check_text(check: FalseAlarmCheck) -> String {
    format!(
        "{} of its {} normal recordings are out of the ranges fitted without each ({:.1} %)",
        check.flagged,
        check.clips,
        check.rate() * 100.0
    )
}

/// A profile's false-alarm check in a table's few words: `2 of 55 out of range (3.6 %)`.
pub fn false_alarm_check_brief(check: FalseAlarmCheck) -> String {
    format!(
        "{} of {} out of range ({:.1} %)",
        check.flagged,
        check.clips,
        check.rate() * 100.0
    )
}

/// An alert rule given as FIRE_AT/WINDOW (`40/60`), within the bounds the listener accepts.
pub fn alert_rule(text: &str) -> Result<AlertRule, String> {
    let (fire_at, window) = text
        .split_once('/')
        .and_then(|(f, w)| Some((f.trim().parse::<i64>().ok()?, w.trim().parse::<i64>().ok()?)))
        .ok_or_else(|| format!("`{text}` is not FIRE_AT/WINDOW, e.g. 40/60"))?;
    if !(1..=3600).contains(&window) || !(1..=window).contains(&fire_at) {
        return Err(format!(
            "`{text}`: the window must hold 1 to 3600 verdicts, and FIRE_AT be between 1 and it"
        ));
    }
    Ok(AlertRule {
        fire_at,
        window,
        clear_at: 0,
    })
}

/// What a profile's false-alarm check costs under `rule`: false alerts per healthy sensor a day.
pub fn false_alerts_per_day(rule: &AlertRule, check: FalseAlarmCheck) -> f64 {
    rule.live_false_alerts_per_day(check.rate())
}

/// [`false_alerts_per_day`] for JSON: `{fire_at, window, expected}`, or null without a check.
pub fn false_alerts_json(rule: &AlertRule, check: Option<FalseAlarmCheck>) -> serde_json::Value {
    check.map_or(serde_json::Value::Null, |check| {
        serde_json::json!({
            "fire_at": rule.fire_at,
            "window": rule.window,
            "expected": round(false_alerts_per_day(rule, check), 6),
        })
    })
}

/// False alerts a day in the words of a rota: so many a day, one every so many days, or hardly
/// ever.
pub fn false_alerts_in_words(per_day: f64) -> String {
    if per_day >= 1.0 {
        format!("about {per_day:.0} false alerts a day per healthy sensor")
    } else if per_day >= 1.0 / 365.0 {
        format!(
            "about one false alert every {:.0} days per healthy sensor",
            1.0 / per_day
        )
    } else {
        "fewer than one false alert a year per healthy sensor".into()
    }
}

/// [`false_alerts_in_words`] for a table whose heading says what is counted.
pub fn false_alerts_brief(per_day: f64) -> String {
    if per_day >= 1.0 {
        format!("about {per_day:.0} a day")
    } else if per_day >= 1.0 / 365.0 {
        format!("one every {:.0} days", 1.0 / per_day)
    } else {
        "under one a year".into()
    }
}
