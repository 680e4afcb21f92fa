//! `auscult setup`: everything a fresh installation needs before the services can work, in order —
//! schema migrations, Elasticsearch index templates, Kibana's saved objects, and the shipped model
//! published (and activated when no model is active yet). Every step is idempotent, so an installer
//! runs it on every start or upgrade. Each step is this binary's own subcommand, run as a child
//! process, so that `setup` does exactly what the individual commands do and prints what they print.

use std::{ffi::OsString, path::PathBuf, process::Command, time::Duration};

use anyhow::{Context, bail};

use crate::database::DatabaseArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    database: DatabaseArgs,
    /// Keep trying to reach PostgreSQL this long before giving up.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    wait_for_database: Duration,
    /// Elasticsearch node URLs, comma-separated: apply the index templates there (credentials from
    /// ELASTIC_USERNAME/ELASTIC_PASSWORD or ELASTIC_API_KEY, CA from ELASTIC_CA_FILE).
    #[arg(long, env = "AUSCULT_ELASTIC_URL")]
    elastic: Option<String>,
    /// Replicas per shard in the templates: 1 on a cluster of three or more nodes, 0 on one node.
    #[arg(long, default_value_t = 1)]
    replicas: u32,
    /// Kibana's URL: import the data views and the dashboard (same credentials; CA from KIBANA_CA_FILE).
    #[arg(long, env = "KIBANA_URL")]
    kibana: Option<String>,
    /// The model to publish: `shipped` (built into this binary), a model file, or `none`. It is
    /// activated only if no model is active yet.
    #[arg(long, default_value = "shipped")]
    model: String,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let wait = humantime::format_duration(args.wait_for_database).to_string();
    let mut steps: Vec<(&str, Vec<OsString>)> = vec![(
        "database schema",
        args_of(&["migrate", "--wait-for-database", &wait]),
    )];
    if let Some(urls) = &args.elastic {
        let replicas = args.replicas.to_string();
        steps.push((
            "Elasticsearch index templates",
            args_of(&[
                "elastic",
                "setup",
                "--elastic",
                urls,
                "--replicas",
                &replicas,
            ]),
        ));
    }
    if let Some(kibana) = &args.kibana {
        steps.push((
            "Kibana saved objects",
            args_of(&["kibana", "import", "--kibana", kibana]),
        ));
    }
    match args.model.as_str() {
        "none" => {}
        "shipped" => steps.push((
            "shipped model",
            args_of(&["model", "publish", "--shipped", "--activate-if-none"]),
        )),
        file => {
            let file = PathBuf::from(file);
            if !file.is_file() {
                bail!("--model {}: no such model file", file.display());
            }
            let mut step = args_of(&["model", "publish", "--activate-if-none"]);
            step.push(file.into_os_string());
            steps.push(("model", step));
        }
    }

    let me = std::env::current_exe().context("finding this executable")?;
    for (n, (what, step)) in steps.iter().enumerate() {
        println!("[{}/{}] {what}", n + 1, steps.len());
        // The database URL travels in the environment, never on a command line others can read.
        let status = Command::new(&me)
            .args(step)
            .env("DATABASE_URL", &args.database.url)
            .status()
            .with_context(|| format!("running the step {what}"))?;
        if !status.success() {
            bail!("setup stopped: the step {what} failed ({status})");
        }
    }
    println!("setup complete");
    Ok(())
}

fn args_of(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}
