//! `auscult model …`: the model registry in PostgreSQL. The analysis service follows the active version.

use std::path::PathBuf;

use anyhow::Context;

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
    }
    Ok(())
}
