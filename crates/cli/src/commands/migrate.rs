//! `auscult migrate`: applies the embedded schema migrations, or with `--check` waits until another
//! process has (what a service's init container does while the migration job runs).

use std::time::Duration;

use crate::database::{self, DatabaseArgs};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    database: DatabaseArgs,
    /// Keep trying to reach PostgreSQL this long before giving up (e.g. 5m); 0 tries once.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    wait_for_database: Duration,
    /// Apply nothing: succeed once the schema is at least the version this build expects, waiting
    /// for it within --wait-for-database.
    #[arg(long)]
    check: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + args.wait_for_database;
    let mut client = database::connect_waiting(&args.database.url, args.wait_for_database).await?;
    if args.check {
        return wait_for_schema(&client, deadline).await;
    }
    let applied = auscult_store::migrate(&mut client).await?;
    if applied.is_empty() {
        println!(
            "schema is up to date (version {})",
            auscult_store::LATEST_VERSION
        );
    } else {
        println!(
            "applied migrations {applied:?}; schema is at version {}",
            auscult_store::LATEST_VERSION
        );
    }
    Ok(())
}

async fn wait_for_schema(
    client: &tokio_postgres::Client,
    deadline: tokio::time::Instant,
) -> anyhow::Result<()> {
    let mut reported = None;
    loop {
        match auscult_store::check_schema(client).await {
            Ok(status) => {
                println!("{status}");
                return Ok(());
            }
            Err(e) if tokio::time::Instant::now() < deadline => {
                let message = e.to_string();
                if reported.as_ref() != Some(&message) {
                    eprintln!("waiting for migrations: {message}");
                    reported = Some(message);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}
