//! `auscult evaluate`: the DCASE measures of a model on labelled recordings.

use std::path::PathBuf;

use auscult_audio::ChannelChoice;
use auscult_model::evaluate::{self, EvaluationReport, Judged, TypeReport};
use auscult_model::metrics::Interval;
use auscult_model::protocol::{self, DrawSpread, Spread};
use auscult_model::train::{TrainConfig, TrainObserver};

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
    /// Also score recordings the model was trained, validated or enrolled on (skipped by default:
    /// their figures say nothing about recordings the model has never heard).
    #[arg(long)]
    include_training_files: bool,
    /// Recorded channel to listen to (default: the model's).
    #[arg(long)]
    channel: Option<ChannelChoice>,
    /// How to test: `file-split` judges the model on the recordings it never heard;
    /// `leave-one-pattern-out` and `onboarding` train the default recipe afresh for every round
    /// (the model is not used): each operating pattern, or each machine type, in turn is left out
    /// of training and tested on.
    #[arg(long, value_enum, default_value_t = Protocol::FileSplit)]
    protocol: Protocol,
    /// leave-one-pattern-out: enrol this many normal clips of the left-out pattern before testing
    /// the rest.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1000))]
    enroll_clips: u64,
    /// onboarding: the share of the new machine's normal clips it is enrolled from.
    #[arg(long, default_value_t = 0.5, value_parser = enroll_fraction)]
    enroll_fraction: f64,
    /// leave-one-pattern-out with --enroll-clips, onboarding: draw the enrolled clips this many
    /// times, each draw enrolled into the same trained model and tested on the clips it left, and
    /// report how far the figures move between draws (the first draw is the default's).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100))]
    enroll_draws: u64,
    /// Seed of the training rounds (leave-one-pattern-out, onboarding).
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    FileSplit,
    LeaveOnePatternOut,
    Onboarding,
}

fn enroll_fraction(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if value > 0.0 && value < 1.0 {
        Ok(value)
    } else {
        Err(format!("{value} must lie strictly between 0 and 1"))
    }
}

/// The protocols that train afresh for every round.
fn run_rounds(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.enroll.is_empty(),
        "--enroll belongs to --protocol file-split; the other protocols enrol by themselves"
    );
    let channel = args.channel.unwrap_or(ChannelChoice::First);
    let listed = recordings::discover(&args.data)?;
    let clips = recordings::load(&listed, channel, 16_000, args.json)?;
    let config = TrainConfig {
        seed: args.seed,
        ..TrainConfig::default()
    };
    let observer = Notes;
    let draws = args.enroll_draws as usize;
    let (name, folds) = match args.protocol {
        Protocol::LeaveOnePatternOut => {
            anyhow::ensure!(
                draws == 1 || args.enroll_clips > 0,
                "--enroll-draws needs --enroll-clips: without enrolling there is nothing to draw"
            );
            (
                "leave-one-pattern-out",
                protocol::leave_one_pattern_out(
                    &clips,
                    &config,
                    args.enroll_clips as usize,
                    draws,
                    &observer,
                )?,
            )
        }
        Protocol::Onboarding => (
            "onboarding",
            protocol::onboarding(&clips, &config, args.enroll_fraction, draws, &observer)?,
        ),
        Protocol::FileSplit => unreachable!("handled by run"),
    };
    anyhow::ensure!(
        !folds.is_empty(),
        "no round to run: leave-one-pattern-out needs a machine type recorded in two operating patterns, onboarding two machine types"
    );
    let spreads = protocol::spread_over_draws(&folds);
    if args.json {
        let rounds: Vec<serde_json::Value> = folds
            .iter()
            .map(|f| {
                serde_json::json!({
                    "machine_type": f.machine_type,
                    "held_out_attribute": (!f.attribute.is_empty()).then_some(&f.attribute),
                    "enrolled_clips": f.enrolled.len(),
                    "enrolled_files": f.enrolled.iter().map(|p| recordings::shown(p)).collect::<Vec<_>>(),
                    "draw": f.draw,
                    "refitted": f.enrolment.iter().map(|e| serde_json::json!({
                        "machine": e.machine.to_string(),
                        "scope": e.scope,
                        "new_clips": e.clips,
                        "earlier_clips": e.earlier_clips,
                        "false_alarm_check": recordings::false_alarm_check_json(e.false_alarm_check),
                    })).collect::<Vec<_>>(),
                    "machine_types": f.report.machine_types.iter().map(type_json).collect::<Vec<_>>(),
                    "clips": f.judged.iter().map(clip_json).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "protocol": name,
                "seed": args.seed,
                "rounds": rounds,
                "over_draws": spreads.iter().map(spread_json).collect::<Vec<_>>(),
            }))?
        );
    } else {
        for f in &folds {
            // A round whose draws would all take the same clips ran once, whatever was asked.
            let drawn = folds
                .iter()
                .filter(|o| o.machine_type == f.machine_type && o.attribute == f.attribute)
                .count();
            let draw = if drawn > 1 {
                format!(" (draw {} of {drawn})", f.draw + 1)
            } else {
                String::new()
            };
            if f.attribute.is_empty() {
                println!(
                    "{name}: {} enrolled from {} normal clips{draw}",
                    f.machine_type,
                    f.enrolled.len()
                );
            } else {
                println!(
                    "{name}: {} pattern {} held out, {} of its normal clips enrolled{draw}",
                    f.machine_type,
                    f.attribute,
                    f.enrolled.len()
                );
            }
            print_types(&f.report);
        }
        for s in &spreads {
            let round = if s.attribute.is_empty() {
                s.machine_type.clone()
            } else {
                format!("{} pattern {}", s.machine_type, s.attribute)
            };
            println!(
                "{round}, over {} draws of the enrolled clips: AUC {}, F1 {}, false alarms {}",
                s.draws,
                spread_shown(s.auc),
                spread_shown(s.f1),
                spread_shown(s.false_alarm_rate)
            );
        }
    }
    Ok(())
}

/// `0.912 (0.85–0.96)`: the mean and range over draws, or `n/a`.
fn spread_shown(spread: Option<Spread>) -> String {
    spread.map_or("n/a".to_owned(), |s| {
        format!("{:.3} ({:.2}–{:.2})", s.mean, s.min, s.max)
    })
}

fn spread_json(s: &DrawSpread) -> serde_json::Value {
    let figure = |spread: Option<Spread>| {
        spread.map_or(serde_json::Value::Null, |s| {
            serde_json::json!({
                "mean": round(s.mean, 4),
                "min": round(s.min, 4),
                "max": round(s.max, 4),
                "draws": s.draws,
            })
        })
    };
    serde_json::json!({
        "machine_type": s.machine_type,
        "held_out_attribute": (!s.attribute.is_empty()).then_some(&s.attribute),
        "draws": s.draws,
        "auc": figure(s.auc),
        "f1": figure(s.f1),
        "false_alarm_rate": figure(s.false_alarm_rate),
    })
}

/// Training progress as lines on stderr.
struct Notes;

impl TrainObserver for Notes {
    fn note(&self, message: &str) {
        eprintln!("{message}");
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.protocol != Protocol::FileSplit {
        return run_rounds(&args);
    }
    anyhow::ensure!(
        args.enroll_draws == 1,
        "--enroll-draws belongs to --protocol leave-one-pattern-out and onboarding: the file split enrols nothing to draw"
    );
    let mut detector = args.model.load()?;
    let channel = recordings::channel(&detector, args.channel)?;
    let rate = detector.info.spectrogram.sample_rate;
    let mut enrolled_clips = Vec::new();
    if !args.enroll.is_empty() {
        let enrolling = recordings::discover(&args.enroll)?;
        enrolled_clips = recordings::load(&enrolling, channel, rate, args.json)?;
        let percentile = detector.info.threshold_percentile;
        for enrolled in auscult_model::enroll::enroll(
            &mut detector,
            &enrolled_clips,
            percentile,
            auscult_model::enroll::Enrolment::Add,
        )? {
            let check = enrolled.false_alarm_check.map_or(String::new(), |c| {
                format!("; {}", recordings::false_alarm_check_text(c))
            });
            eprintln!(
                "enrolled {} from {} new normal recordings and {} it already knew ({:?} detector){check}",
                enrolled.machine, enrolled.clips, enrolled.earlier_clips, enrolled.detector
            );
        }
    }

    let listed = recordings::discover(&args.data)?;
    let clips = recordings::load(&listed, channel, rate, args.json)?;
    let seen = detector.info.heard();
    let (judge_these, skipped): (Vec<_>, Vec<_>) = clips
        .iter()
        .partition(|c| args.include_training_files || !seen.contains(c.content_sha256.as_str()));
    if !skipped.is_empty() {
        eprintln!(
            "skipped {} recordings the model was trained, validated or enrolled on (--include-training-files scores them)",
            skipped.len()
        );
    }
    anyhow::ensure!(!judge_these.is_empty(), "no recordings left to evaluate");

    // The baselines' idea of each machine's normal: what the model learned it from.
    let mut reference = evaluate::Reference::learned(&detector, &clips);
    for clip in &enrolled_clips {
        reference.add(&detector, clip);
    }
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
    let report = evaluate::report(&judged, &reference);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json(
                &report,
                &judged,
                skipped.len(),
                &detector.info.version
            ))?
        );
    } else {
        print(&report, &detector.info.version);
    }
    Ok(())
}

/// A figure and its interval, rounded, as JSON: `{"value", "low", "high"}`.
pub fn interval(i: Option<Interval>) -> serde_json::Value {
    match i {
        Some(i) => serde_json::json!({
            "value": round(i.value, 4),
            "low": round(i.low, 4),
            "high": round(i.high, 4),
        }),
        None => serde_json::Value::Null,
    }
}

pub fn type_json(t: &TypeReport) -> serde_json::Value {
    serde_json::json!({
        "machine_type": t.machine_type,
        "n_normal": t.n_normal,
        "n_anomaly": t.n_anomaly,
        "auc": interval(t.auc),
        "pauc": interval(t.pauc),
        "precision": round(t.precision, 4),
        "recall": round(t.recall, 4),
        "f1": interval(t.f1),
        "false_alarm_rate": interval(t.false_alarm_rate),
        "false_alarm_check": recordings::false_alarm_check_json(t.false_alarm_check),
        "profile_scope": t.profile_scope,
        "class_accuracy": t.class_accuracy.map(|v| round(v, 4)),
        "parts": {
            "windows_auc": interval(t.windows_part_auc),
            "bands_auc": interval(t.bands_part_auc),
            "band_peaks_auc": interval(t.band_peaks_part_auc),
            "impulsiveness_auc": interval(t.impulsiveness_part_auc),
        },
        "baselines": t.baselines.iter().map(|(s, i)| (
            serde_json::to_value(s).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
            serde_json::json!({ "auc": interval(*i) }),
        )).collect::<serde_json::Map<_, _>>(),
    })
}

fn json(
    report: &EvaluationReport,
    judged: &[Judged],
    skipped: usize,
    version: &str,
) -> serde_json::Value {
    serde_json::json!({
        "protocol": "file-split",
        "machine_types": report.machine_types.iter().map(type_json).collect::<Vec<_>>(),
        "clips": judged.iter().map(clip_json).collect::<Vec<_>>(),
        "mean_auc": report.mean_auc.map(|v| round(v, 4)),
        "files": report.files,
        "skipped_training_files": skipped,
        "model_version": version,
    })
}

/// One judged clip: its label, its verdict and score over threshold, and each part in units of
/// its range (above 1: out of range), so a false alarm or a missed fault can be traced to the part
/// that decided it.
fn clip_json(j: &Judged) -> serde_json::Value {
    let part = |p: Option<f64>| p.filter(|v| v.is_finite()).map(|v| round(v, 4));
    serde_json::json!({
        "file": recordings::shown(&j.file),
        "machine": j.machine.to_string(),
        "attribute": j.attribute,
        "label": if j.anomaly { "anomaly" } else { "normal" },
        "verdict": j.verdict,
        "score": round(j.relative_score, 4),
        "parts": {
            "windows": part(Some(j.windows_part)),
            "bands": part(j.bands_part),
            "band_peaks": part(j.band_peaks_part),
            "impulsiveness": part(j.impulsiveness_part),
            "impulsiveness_side": j.impulsiveness_side,
        },
    })
}

/// `0.912 [0.85–0.96]`, or `n/a`.
pub fn shown(i: Option<Interval>) -> String {
    i.map_or("n/a".to_owned(), |i| {
        format!("{:.3} [{:.2}–{:.2}]", i.value, i.low, i.high)
    })
}

pub fn print_types(report: &EvaluationReport) {
    println!(
        "{:<12} {:>6} {:>7}  {:<20} {:<20} {:<20} {:<20} {:>8}  {:>9}  {:<20} {:<20} {:<20} {:<20}  best statistic (AUC)",
        "machine",
        "normal",
        "anomaly",
        "AUC [95% CI]",
        "pAUC",
        "F1",
        "false alarms",
        "expected",
        "own class",
        "windows part",
        "spectrum part",
        "band peaks part",
        "impulsiveness part"
    );
    for t in &report.machine_types {
        let best = t
            .best_baseline()
            .map_or("n/a".to_owned(), |(s, auc)| format!("{s:?} {auc:.3}"));
        println!(
            "{:<12} {:>6} {:>7}  {:<20} {:<20} {:<20} {:<20} {:>8}  {:>9}  {:<20} {:<20} {:<20} {:<20}  {best}",
            t.machine_type,
            t.n_normal,
            t.n_anomaly,
            shown(t.auc),
            shown(t.pauc),
            shown(t.f1),
            shown(t.false_alarm_rate),
            // What the profiles' own checks expected of healthy clips.
            t.false_alarm_check
                .map_or("n/a".to_owned(), |c| format!("{:.3}", c.rate())),
            t.class_accuracy
                .map_or("n/a".to_owned(), |v| format!("{:.0} %", 100.0 * v)),
            shown(t.windows_part_auc),
            shown(t.bands_part_auc),
            shown(t.band_peaks_part_auc),
            shown(t.impulsiveness_part_auc),
        );
    }
}

fn print(report: &EvaluationReport, version: &str) {
    println!("model {version}, {} recordings", report.files);
    print_types(report);
    println!(
        "mean AUC {}",
        report
            .mean_auc
            .map_or("n/a".to_owned(), |v| format!("{v:.3}"))
    );
}
