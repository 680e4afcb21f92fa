//! `auscult enroll`: onboards machines into a model from recordings of their normal sound.

use std::path::PathBuf;

use anyhow::Context;
use auscult_audio::ChannelChoice;
use auscult_model::enroll::Enrolment;
use auscult_model::profile::{RELIABLE_RANGE_CLIPS, Scope};
use auscult_store::AlertRule;

use crate::commands::recordings::{self, ModelArg, round};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Dataset folders holding normal recordings of the machines to enroll (anomalous ones are ignored).
    #[arg(long, required = true, num_args = 1.., value_name = "DIR")]
    data: Vec<PathBuf>,
    #[command(flatten)]
    model: ModelArg,
    /// Where to write the model with the new profiles.
    #[arg(long, value_name = "MODEL")]
    out: PathBuf,
    /// Share of the machine's healthy clips the threshold may flag, from a gamma fitted to
    /// cross-fitted scores of its normal recordings (default: the model's, 0.01 for new models).
    #[arg(long, value_parser = crate::commands::train::false_alarm_rate)]
    false_alarm_rate: Option<f64>,
    /// Recorded channel to listen to (default: the model's).
    #[arg(long)]
    channel: Option<ChannelChoice>,
    /// Fit each machine's profile on these recordings alone, forgetting those it was fitted from
    /// (a machine rebuilt, a microphone changed or moved). Without it, a machine already known is
    /// refitted on the recordings its profile kept and these together: a new operating pattern
    /// joins the ones it had.
    #[arg(long)]
    replace: bool,
    /// The alert rule the listener pages by, FIRE_AT/WINDOW (e.g. 40/60: 40 of a sensor's last 60
    /// verdicts anomalous), to turn each profile's false-alarm check into false alerts per healthy
    /// sensor a day (default: the rule the Helm chart and docker compose run, 40/60).
    #[arg(long, value_parser = recordings::alert_rule, value_name = "FIRE_AT/WINDOW")]
    alert_rule: Option<AlertRule>,
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut detector = args.model.load()?;
    let channel = recordings::channel(&detector, args.channel)?;
    let listed = recordings::discover(&args.data)?;
    let clips = recordings::load(
        &listed,
        channel,
        detector.info.spectrogram.sample_rate,
        args.json,
    )?;
    let percentile = args
        .false_alarm_rate
        .map_or(detector.info.threshold_percentile, |rate| {
            100.0 * (1.0 - rate)
        });
    let enrolment = if args.replace {
        Enrolment::Replace
    } else {
        Enrolment::Add
    };
    let rule = args.alert_rule.unwrap_or(AlertRule::DEPLOYED);
    let enrolled = auscult_model::enroll::enroll(&mut detector, &clips, percentile, enrolment)?;
    detector
        .save(&args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    // On stderr, so the JSON on stdout stays one document.
    for e in enrolled.iter().filter(|e| e.clips > 0) {
        let fitted_on = e.clips + e.earlier_clips;
        if fitted_on < RELIABLE_RANGE_CLIPS {
            eprintln!(
                "warning: {} was enrolled from {fitted_on} normal recordings: its threshold is set by \
                 clips each scored against statistics of the other {}, and is uncertain below \
                 {RELIABLE_RANGE_CLIPS}; enrol again as more normal recordings arrive",
                e.machine,
                fitted_on.saturating_sub(1)
            );
        }
        // A type's profile pages only where it judges machines without one of their own.
        let pages = e.scope == Scope::Machine || e.judges_any_machine;
        if let Some(check) = e.false_alarm_check.filter(|_| pages) {
            let per_day = recordings::false_alerts_per_day(&rule, check);
            if per_day > 1.0 {
                eprintln!(
                    "warning: {}: {}; under the alert rule {} of {} that is {}: enrol more of its \
                     normal recordings, or run a stricter rule (listener.alerts)",
                    e.machine,
                    recordings::false_alarm_check_text(check),
                    rule.fire_at,
                    rule.window,
                    recordings::false_alerts_in_words(per_day),
                );
            }
        }
        if e.replaced && !args.replace {
            eprintln!(
                "warning: {}'s earlier profile kept none of the recordings it was fitted from (a model \
                 written before profiles kept them), so it is now fitted on these {} alone: enrol \
                 its earlier recordings together with these to keep what it knew",
                e.machine, e.clips
            );
        }
    }
    if args.json {
        let json: Vec<serde_json::Value> = enrolled
            .iter()
            .map(|e| {
                let mut entry = serde_json::json!({
                    "machine": e.machine.to_string(),
                    "scope": e.scope,
                    "detector": e.detector,
                    "clips": e.clips,
                    "earlier_clips": e.earlier_clips,
                    "already_known": e.already_known,
                    "replaced": e.replaced,
                    "windows": e.windows,
                    "window_threshold": round(e.window_threshold, 3),
                    "clip_threshold": round(e.clip_threshold, 3),
                    "false_alarm_check": recordings::false_alarm_check_json(e.false_alarm_check),
                    "false_alerts_per_day": recordings::false_alerts_json(&rule, e.false_alarm_check),
                });
                if e.scope != Scope::Machine {
                    entry["machines"] = serde_json::json!(e.machines);
                }
                entry
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        for e in &enrolled {
            if e.scope != Scope::Machine {
                println!("{}", type_refit(e));
                continue;
            }
            if e.clips == 0 {
                println!(
                    "{}: nothing new, all {} recordings were already in its profile",
                    e.machine, e.already_known
                );
                continue;
            }
            let mut earlier = if e.earlier_clips > 0 {
                format!(" and {} it already knew", e.earlier_clips)
            } else {
                String::new()
            };
            if e.already_known > 0 {
                earlier += &format!(
                    " ({} of those given were among them, counted once)",
                    e.already_known
                );
            }
            println!(
                "enrolled {} ({:?}, {:?} detector) from {} new recordings{earlier}, {} windows: threshold {:.3} per clip, {:.3} per window",
                e.machine,
                e.scope,
                e.detector,
                e.clips,
                e.windows,
                e.clip_threshold,
                e.window_threshold
            );
            if let Some(check) = e.false_alarm_check {
                println!(
                    "    false alarms: {}: expect about that share of its healthy clips flagged, and \
                     under the alert rule {} of {} {}",
                    recordings::false_alarm_check_text(check),
                    rule.fire_at,
                    rule.window,
                    recordings::false_alerts_in_words(recordings::false_alerts_per_day(
                        &rule, check
                    ))
                );
            }
        }
        println!("wrote {}", args.out.display());
    }
    Ok(())
}

/// What enrolling did to a machine type's profile, and which machines it judges now.
fn type_refit(e: &auscult_model::enroll::Enrolled) -> String {
    let machine_type = &e.machine.machine_type;
    let judges = if e.judges_any_machine {
        format!("it judges any {machine_type} without a profile of its own")
    } else {
        format!(
            "it judges no other {machine_type} until a second one is enrolled: one machine's normal sound is not another's"
        )
    };
    format!(
        "refitted {} from {} recordings ({} new to it) of {}: {judges}",
        e.machine,
        e.clips + e.earlier_clips,
        e.clips,
        e.machines
            .iter()
            .map(|id| format!("{machine_type}/{id}"))
            .collect::<Vec<_>>()
            .join(", "),
    )
}
