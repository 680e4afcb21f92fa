//! `auscult device …`: the device registry.

use crate::database::{self, DatabaseArgs};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Register a device and print its token (shown once; only a digest is stored).
    Add {
        /// Device id, as gateways send it in every frame (1–128 bytes).
        device_id: String,
        /// Where the device is, what it listens to.
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Issue an additional token for a device (rotate: issue, deploy, then revoke).
    Token {
        device_id: String,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Revoke every token of a device: its gateways are refused from their next stream on.
    Revoke {
        device_id: String,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// List devices.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Add {
            device_id,
            description,
            database,
        } => {
            let mut client = database::connect(&database.url).await?;
            let token = auscult_store::add_device(&mut client, &device_id, &description).await?;
            eprintln!(
                "device {device_id} registered; its token (store it now, it is not shown again):"
            );
            println!("{token}");
        }
        Command::Token {
            device_id,
            database,
        } => {
            let mut client = database::connect(&database.url).await?;
            println!(
                "{}",
                auscult_store::issue_token(&mut client, &device_id).await?
            );
        }
        Command::Revoke {
            device_id,
            database,
        } => {
            let client = database::connect(&database.url).await?;
            let revoked = auscult_store::revoke_tokens(&client, &device_id).await?;
            println!("revoked {revoked} token(s) of {device_id}");
        }
        Command::List { json, database } => {
            let client = database::connect(&database.url).await?;
            let devices = auscult_store::list_devices(&client).await?;
            if json {
                let list: Vec<_> = devices
                    .iter()
                    .map(|d| {
                        serde_json::json!({
                            "device_id": d.device_id,
                            "description": d.description,
                            "active_tokens": d.active_tokens,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!("{:<32} {:>6}  description", "device", "tokens");
                for d in devices {
                    println!(
                        "{:<32} {:>6}  {}",
                        d.device_id, d.active_tokens, d.description
                    );
                }
            }
        }
    }
    Ok(())
}
