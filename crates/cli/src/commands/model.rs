//! `auscult model …`: the model registry in PostgreSQL (the analysis service follows the active
//! version), and what a model file holds.

use std::path::PathBuf;

use anyhow::Context;
use auscult_model::profile::{MachineProfile, Scope};
use auscult_store::AlertRule;

use crate::commands::recordings::{self, ModelArg};
use crate::database::{self, DatabaseArgs};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Store a model file in the registry under its own version (checked by loading it first).
    Publish {
        #[arg(required_unless_present = "shipped")]
        file: Option<PathBuf>,
        /// Publish the model built into this binary instead of a file.
        #[arg(long, conflicts_with = "file")]
        shipped: bool,
        /// Also make it the active model.
        #[arg(long)]
        activate: bool,
        /// Make it the active model only if none is active yet, so that a later choice of an operator
        /// is never undone (what an installer runs on every upgrade).
        #[arg(long, conflicts_with = "activate")]
        activate_if_none: bool,
        /// Keep trying to reach PostgreSQL this long before giving up (e.g. 5m).
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        wait_for_database: std::time::Duration,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// List the published models; the active one is marked.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Make a published version the active model (rolling back is activating an older one).
    Activate {
        version: String,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// What a model file holds: how it was trained, the machines it judges, and how often each
    /// machine's profile may be expected to flag healthy sound, and to page.
    Show {
        #[command(flatten)]
        model: ModelArg,
        /// The alert rule the listener pages by, FIRE_AT/WINDOW (default: the rule the Helm chart
        /// and docker compose run, 40/60).
        #[arg(long, value_parser = recordings::alert_rule, value_name = "FIRE_AT/WINDOW")]
        alert_rule: Option<AlertRule>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Publish {
            file,
            shipped,
            activate,
            activate_if_none,
            wait_for_database,
            database,
        } => {
            // clap requires a file unless --shipped is given, and refuses both.
            debug_assert!(file.is_some() != shipped);
            let (name, bytes) = match &file {
                Some(file) => (
                    file.display().to_string(),
                    std::fs::read(file).with_context(|| format!("reading {}", file.display()))?,
                ),
                None => (
                    "the shipped model".to_owned(),
                    auscult_model::shipped::bytes()
                        .context("this build ships no model: publish a file")?
                        .to_vec(),
                ),
            };
            // Only a file the analysis service can load may enter the registry.
            let detector =
                auscult_model::Detector::from_bytes(&bytes, &auscult_model::default_device())
                    .with_context(|| format!("{name} is not a usable model"))?;
            let info = &detector.info;
            let summary = serde_json::json!({
                "created_at": info.created_at,
                "classes": info.classes.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "machines": info.profiles.iter().map(|p| p.key().to_string()).collect::<Vec<_>>(),
                "data_fingerprint": info.training.data_fingerprint,
                "validation": info.training.validation,
            });
            let mut client = database::connect_waiting(&database.url, wait_for_database).await?;
            let outcome =
                auscult_store::publish_model(&client, &info.version, &bytes, &summary).await?;
            match outcome {
                auscult_store::PublishOutcome::Published => println!("published {}", info.version),
                auscult_store::PublishOutcome::AlreadyPublished => {
                    println!(
                        "{} was already published with the same contents",
                        info.version
                    );
                }
            }
            let active = auscult_store::list_models(&client)
                .await?
                .into_iter()
                .find(|m| m.active);
            match (&active, activate || (activate_if_none && active.is_none())) {
                (_, true) => {
                    auscult_store::activate_model(&mut client, &info.version).await?;
                    println!("activated {}", info.version);
                }
                (Some(active), false) if activate_if_none => {
                    println!("left {} active", active.version);
                }
                _ => {}
            }
        }
        Command::List { json, database } => {
            let client = database::connect(&database.url).await?;
            let models = auscult_store::list_models(&client).await?;
            let time = |t: std::time::SystemTime| humantime::format_rfc3339_seconds(t).to_string();
            if json {
                let list: Vec<_> = models
                    .iter()
                    .map(|m| {
                        serde_json::json!({
                            "version": m.version,
                            "active": m.active,
                            "sha256": m.sha256,
                            "bytes": m.size_bytes,
                            "published_at": time(m.published_at),
                            "activated_at": m.activated_at.map(time),
                            "summary": m.summary,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!(
                    "{:<2}{:<24} {:>10}  {:<22} classes",
                    "", "version", "bytes", "published"
                );
                for m in &models {
                    let classes = m.summary["classes"].as_array().map_or(0, Vec::len);
                    println!(
                        "{:<2}{:<24} {:>10}  {:<22} {classes}",
                        if m.active { "*" } else { "" },
                        m.version,
                        m.size_bytes,
                        time(m.published_at)
                    );
                }
            }
        }
        Command::Activate { version, database } => {
            let mut client = database::connect(&database.url).await?;
            auscult_store::activate_model(&mut client, &version).await?;
            println!("activated {version}");
        }
        Command::Show {
            model,
            alert_rule,
            json,
        } => show(&model, alert_rule.unwrap_or(AlertRule::DEPLOYED), json)?,
    }
    Ok(())
}

fn show(model: &ModelArg, rule: AlertRule, json: bool) -> anyhow::Result<()> {
    let detector = model.load()?;
    let info = &detector.info;
    let training = &info.training;
    let target = 1.0 - info.threshold_percentile / 100.0;
    if json {
        let profiles: Vec<_> = info
            .profiles
            .iter()
            .map(|p| {
                serde_json::json!({
                    "machine": p.key().to_string(),
                    "scope": p.scope,
                    "detector": p.detector,
                    "threshold_method": p.threshold_method,
                    "fitted_from": p.fitted_from.len(),
                    "machines": p.machines,
                    "judges_any_machine": p.judges_any_machine(),
                    "false_alarm_check": recordings::false_alarm_check_json(p.false_alarm_check),
                    "false_alerts_per_day": recordings::false_alerts_json(&rule, p.false_alarm_check),
                })
            })
            .collect();
        let shown = serde_json::json!({
            "version": info.version,
            "created_at": info.created_at,
            "channel": info.channel,
            "false_alarm_target": recordings::round(target, 6),
            "training": {
                "data_fingerprint": training.data_fingerprint,
                "seed": training.seed,
                "training_files": training.training_files,
                "validation_files": training.validation_files,
                "fault_labels": training.fault_labels,
                "held_out_attributes": training.held_out_attributes,
            },
            "alert_rule": {"fire_at": rule.fire_at, "window": rule.window},
            "profiles": profiles,
        });
        println!("{}", serde_json::to_string_pretty(&shown)?);
        return Ok(());
    }
    println!("model {} (created {})", info.version, info.created_at);
    println!(
        "  trained on {} recordings ({} for validation), seed {}, {}; data fingerprint {}",
        training.training_files + training.validation_files,
        training.validation_files,
        training.seed,
        if training.fault_labels {
            "with fault labels"
        } else {
            "no fault heard"
        },
        training.data_fingerprint
    );
    println!(
        "  listens to channel {}; thresholds target {:.1} % of a healthy machine's clips",
        info.channel,
        target * 100.0
    );
    println!(
        "  {:<22} {:<28} {:<10} {:>10}  {:<32} false alerts per healthy sensor, {} of {}",
        "machine",
        "profile",
        "detector",
        "recordings",
        "false-alarm check",
        rule.fire_at,
        rule.window
    );
    for p in &info.profiles {
        println!(
            "  {:<22} {:<28} {:<10} {:>10}  {:<32} {}",
            p.key().to_string(),
            scope_text(p),
            format!("{:?}", p.detector).to_lowercase(),
            p.fitted_from.len(),
            p.false_alarm_check.map_or_else(
                || unchecked(p).to_owned(),
                recordings::false_alarm_check_brief
            ),
            p.false_alarm_check.map_or_else(
                || "—".to_owned(),
                |check| recordings::false_alerts_brief(recordings::false_alerts_per_day(
                    &rule, check
                ))
            ),
        );
    }
    Ok(())
}

fn scope_text(profile: &MachineProfile) -> String {
    match profile.scope {
        Scope::Machine => "machine".into(),
        Scope::MachineType if profile.judges_any_machine() => {
            format!("type: any {} without one", profile.machine_type)
        }
        Scope::MachineType => format!("type: {} only", profile.machines.join(", ")),
        Scope::Global => "any machine".into(),
    }
}

/// Why a profile has no false-alarm check.
fn unchecked(profile: &MachineProfile) -> &'static str {
    match profile.threshold_method {
        auscult_model::calibrate::ThresholdMethod::MaxF1 { .. } => "none: set by fault labels",
        _ => "none: calibrated before checks",
    }
}
