//! `auscult migrate`.

use crate::database::{self, DatabaseArgs};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    database: DatabaseArgs,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut client = database::connect(&args.database.url).await?;
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
