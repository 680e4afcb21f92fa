//! `auscult evaluate`: the DCASE measures of a model on labelled recordings.

use std::collections::HashSet;
use std::path::PathBuf;

use auscult_audio::ChannelChoice;
use auscult_model::evaluate::{self, EvaluationReport};

use crate::commands::recordings::{self, ModelArg, round};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Dataset folders (each with a manifest.csv, or a folder of such folders).
    #[arg(long, required = true, num_args = 1.., value_name = "DIR")]
    data: Vec<PathBuf>,
    #[command(flatten)]
    model: ModelArg,
    /// First fit profiles for new machines from the normal recordings of these dataset folders.
    #[arg(long, value_name = "DIR")]
    enroll: Vec<PathBuf>,
    /// Also score recordings the model was trained or validated on (skipped by default: their
    /// figures say nothing about recordings the model has never heard).
    #[arg(long)]
    include_training_files: bool,
    /// Recorded channel to listen to (default: the model's).
    #[arg(long)]
    channel: Option<ChannelChoice>,
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut detector = args.model.load()?;
    let channel = recordings::channel(&detector, args.channel)?;
    let rate = detector.info.spectrogram.sample_rate;
    if !args.enroll.is_empty() {
        let enrolling = recordings::discover(&args.enroll)?;
        let clips = recordings::load(&enrolling, channel, rate, args.json)?;
        let percentile = detector.info.threshold_percentile;
        for enrolled in auscult_model::enroll::enroll(&mut detector, &clips, percentile)? {
            eprintln!(
                "enrolled {} from {} normal recordings ({:?} detector)",
                enrolled.machine, enrolled.clips, enrolled.detector
            );
        }
    }

    let listed = recordings::discover(&args.data)?;
    let clips = recordings::load(&listed, channel, rate, args.json)?;
    let seen: HashSet<&str> = detector
        .info
        .training
        .files
        .iter()
        .map(String::as_str)
        .collect();
    let (judge_these, skipped): (Vec<_>, Vec<_>) = clips
        .iter()
        .partition(|c| args.include_training_files || !seen.contains(c.content_sha256.as_str()));
    if !skipped.is_empty() {
        eprintln!(
            "skipped {} recordings the model was trained or validated on (--include-training-files scores them)",
            skipped.len()
        );
    }
    anyhow::ensure!(!judge_these.is_empty(), "no recordings left to evaluate");

    let bar = recordings::bar(judge_these.len() as u64, "scoring", args.json);
    let mut judged = Vec::with_capacity(judge_these.len());
    for clip in judge_these {
        match evaluate::judge(&detector, clip) {
            Ok(j) => judged.push(j),
            Err(e) => eprintln!("{}: {e}", recordings::shown(&clip.recording.path)),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let report = evaluate::report(&judged);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json(&report, skipped.len(), &detector.info.version))?
        );
    } else {
        print(&report, &detector.info.version);
    }
    Ok(())
}

fn json(report: &EvaluationReport, skipped: usize, version: &str) -> serde_json::Value {
    let r = |v: Option<f64>| v.map(|v| round(v, 4));
    serde_json::json!({
        "machine_types": report.machine_types.iter().map(|t| serde_json::json!({
            "machine_type": t.machine_type,
            "n_normal": t.n_normal,
            "n_anomaly": t.n_anomaly,
            "auc": r(t.auc),
            "pauc": r(t.pauc),
            "precision": round(t.precision, 4),
            "recall": round(t.recall, 4),
            "f1": round(t.f1, 4),
            "profile_scope": t.profile_scope,
        })).collect::<Vec<_>>(),
        "mean_auc": r(report.mean_auc),
        "files": report.files,
        "skipped_training_files": skipped,
        "model_version": version,
    })
}

fn print(report: &EvaluationReport, version: &str) {
    println!("model {version}, {} recordings", report.files);
    println!(
        "{:<16} {:>8} {:>9} {:>7} {:>7} {:>9} {:>7} {:>7}  profile",
        "machine type", "normal", "anomaly", "AUC", "pAUC", "precision", "recall", "F1"
    );
    let show = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.3}"));
    for t in &report.machine_types {
        println!(
            "{:<16} {:>8} {:>9} {:>7} {:>7} {:>9.3} {:>7.3} {:>7.3}  {:?}",
            t.machine_type,
            t.n_normal,
            t.n_anomaly,
            show(t.auc),
            show(t.pauc),
            t.precision,
            t.recall,
            t.f1,
            t.profile_scope
        );
    }
    println!("mean AUC {}", show(report.mean_auc));
}
