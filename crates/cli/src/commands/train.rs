//! `auscult train`: trains a model on labelled recordings and writes the model file.

use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::Context;
use auscult_audio::ChannelChoice;
use auscult_model::file::EpochRecord;
use auscult_model::train::{TrainConfig, TrainObserver};
use indicatif::ProgressBar;

use crate::commands::recordings::{self, round};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Dataset folders (each with a manifest.csv, or a folder of such folders).
    #[arg(long, required = true, num_args = 1.., value_name = "DIR")]
    data: Vec<PathBuf>,
    /// Where to write the model.
    #[arg(long, value_name = "MODEL")]
    out: PathBuf,
    /// Seed for the splits, initial weights and window order: the same seed and data give the same model.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Most epochs to train.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=1000))]
    epochs: u64,
    /// Stop after this many epochs without a better validation score.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u64).range(1..=1000))]
    patience: u64,
    /// Share of each stratum's files used for validation.
    #[arg(long, default_value_t = 0.2, value_parser = fraction)]
    validation_fraction: f64,
    /// Share of each stratum's files set aside untouched, so `evaluate` has recordings the model never heard.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    test_fraction: f64,
    /// Leave an operating pattern (manifest `attribute`) out of training entirely; repeatable.
    #[arg(long = "hold-out-attribute", value_name = "ATTRIBUTE")]
    hold_out_attributes: Vec<String>,
    /// Samples between the windows cut from each recording (16 kHz: 8000 = half a second).
    #[arg(long, default_value_t = 8_000, value_parser = clap::value_parser!(u64).range(160..=160_000))]
    window_hop: u64,
    /// Output channels of the three convolution blocks.
    #[arg(long, value_delimiter = ',', default_values_t = [16, 32, 64])]
    channels: Vec<usize>,
    /// Units of the three hidden layers (the last is the embedding).
    #[arg(long, value_delimiter = ',', default_values_t = [256, 256, 128])]
    hidden: Vec<usize>,
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1024))]
    batch_size: u64,
    #[arg(long, default_value_t = 1e-3)]
    learning_rate: f64,
    /// Share of a healthy machine's unseen clips the threshold may flag (from a gamma fitted to
    /// held-out normal scores).
    #[arg(long, default_value_t = auscult_model::calibrate::DEFAULT_FALSE_ALARM_RATE, value_parser = false_alarm_rate)]
    false_alarm_rate: f64,
    /// Also learn from labelled faults: they become classes, choose the epoch and set thresholds
    /// by maximum F1 (a supervised model; its figures on those faults are not a test).
    #[arg(long)]
    fault_labels: bool,
    /// Hear absolute levels instead of each window relative to its own mean (not recommended: a
    /// microphone's gain then moves every score).
    #[arg(long)]
    absolute_level: bool,
    /// Recorded channel to listen to: a number from 0, `first`, or `mix`.
    #[arg(long, default_value = "first")]
    channel: ChannelChoice,
    /// Print the training summary as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn fraction(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if (0.0..0.9).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{value} must be at least 0 and below 0.9"))
    }
}

pub fn false_alarm_rate(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if (0.0001..=0.5).contains(&value) {
        Ok(value)
    } else {
        Err(format!(
            "{value} is not a false-alarm rate from 0.0001 to 0.5 (0.01: one healthy clip in a hundred)"
        ))
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let dims = |v: &[usize], what: &str| -> anyhow::Result<[usize; 3]> {
        match v {
            [a, b, c] if v.iter().all(|&x| (1..=4096).contains(&x)) => Ok([*a, *b, *c]),
            _ => anyhow::bail!("--{what} takes three sizes from 1 to 4096, e.g. 16,32,64"),
        }
    };
    let config = TrainConfig {
        seed: args.seed,
        max_epochs: args.epochs as usize,
        patience: args.patience as usize,
        batch_size: args.batch_size as usize,
        learning_rate: args.learning_rate,
        validation_fraction: args.validation_fraction,
        test_fraction: args.test_fraction,
        hold_out_attributes: args.hold_out_attributes.clone(),
        channels: dims(&args.channels, "channels")?,
        hidden: dims(&args.hidden, "hidden")?,
        false_alarm_rate: args.false_alarm_rate,
        fault_labels: args.fault_labels,
        relative_level: !args.absolute_level,
        window_hop: args.window_hop as usize,
        ..TrainConfig::default()
    };
    anyhow::ensure!(
        args.validation_fraction + args.test_fraction < 0.9,
        "--validation-fraction and --test-fraction together must leave recordings to train on"
    );
    let recordings = recordings::discover(&args.data)?;
    eprintln!(
        "{} recordings in {} folder(s)",
        recordings.len(),
        args.data.len()
    );
    let clips = recordings::load(&recordings, args.channel, 16_000, false)?;

    let observer = Progress::default();
    let mut detector = auscult_model::train::train(&clips, &config, &observer)?;
    observer.finish();
    detector.info.channel = match args.channel {
        ChannelChoice::First => "first".into(),
        ChannelChoice::Index(i) => i.to_string(),
        ChannelChoice::MixDown => "mix".into(),
    };
    let today = today();
    detector.info.created_at = today.clone();
    detector.stamp_version(&today.replace('-', ""))?;
    detector
        .save(&args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    let size = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);

    let training = &detector.info.training;
    if args.json {
        let summary = serde_json::json!({
            "model": args.out,
            "version": detector.info.version,
            "bytes": size,
            "classes": detector.info.classes.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "training_files": training.training_files,
            "validation_files": training.validation_files,
            "best_epoch": training.best_epoch,
            "epochs": training.epochs,
            "validation": training.validation,
            "seconds": round(training.seconds, 1),
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "wrote {} ({:.1} MB), version {}: best epoch {} of {}, {:.0} s",
            args.out.display(),
            size as f64 / 1e6,
            detector.info.version,
            training.best_epoch,
            training.epochs.len(),
            training.seconds
        );
        for t in &training.validation {
            println!(
                "  validation {}: {} normal, {} anomalous, AUC {}, F1 {:.3} at the calibrated threshold",
                t.machine_type,
                t.n_normal,
                t.n_anomaly,
                t.auc.map_or("n/a".into(), |a| format!("{a:.3}")),
                t.f1
            );
        }
    }
    Ok(())
}

/// Today's date (UTC) as YYYY-MM-DD.
fn today() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0) as i64;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// A progress bar per epoch and a line per finished epoch, on stderr.
#[derive(Default)]
struct Progress {
    bar: Mutex<Option<ProgressBar>>,
    losses: Mutex<(f64, usize)>,
}

impl TrainObserver for Progress {
    fn epoch_started(&self, epoch: usize, batches: usize) {
        let bar = recordings::bar(batches as u64, &format!("epoch {epoch}"), false);
        if let Ok(mut slot) = self.bar.lock() {
            *slot = Some(bar);
        }
        if let Ok(mut losses) = self.losses.lock() {
            *losses = (0.0, 0);
        }
    }

    fn batch_done(&self, loss: f64) {
        let mean = self.losses.lock().map(|mut l| {
            l.0 += loss;
            l.1 += 1;
            l.0 / l.1 as f64
        });
        if let (Ok(slot), Ok(mean)) = (self.bar.lock(), mean)
            && let Some(bar) = slot.as_ref()
        {
            bar.inc(1);
            bar.set_message(format!("loss {mean:.4}"));
        }
    }

    fn epoch_done(&self, record: &EpochRecord, best: bool) {
        if let Ok(mut slot) = self.bar.lock()
            && let Some(bar) = slot.take()
        {
            bar.finish_and_clear();
        }
        let show = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.4}"));
        eprintln!(
            "epoch {:>3}: loss {:.4}, validation loss {}, validation AUC {}{}",
            record.epoch,
            record.loss,
            show(record.validation_loss),
            show(record.validation_auc),
            if best { "  (best so far)" } else { "" }
        );
    }

    fn note(&self, message: &str) {
        eprintln!("{message}");
    }
}

impl Progress {
    fn finish(&self) {
        if let Ok(mut slot) = self.bar.lock()
            && let Some(bar) = slot.take()
        {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn today_is_a_date() {
        let today = super::today();
        assert_eq!(today.len(), 10);
        assert!(today.starts_with("20"), "{today}");
    }
}
