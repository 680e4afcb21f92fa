//! `auscult device …`: the device registry, its tokens, and certificates for mutual TLS.

mod certificates;

use std::{io::Write, path::Path, path::PathBuf};

use anyhow::Context;

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
        /// Write the token to this file (created readable by its owner only) instead of stdout.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// If the device is already registered, issue it an additional token instead of failing
        /// (for scripts that run again, such as a compose file's simulator).
        #[arg(long)]
        exists_ok: bool,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Issue an additional token for a device (rotate: issue, deploy, then revoke).
    Token {
        device_id: String,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Revoke every token of a device: new streams are refused at once, open ones end within ingest's
    /// `auth.recheck_interval` (10 s by default).
    Revoke {
        device_id: String,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Issue a client certificate for mutual TLS, signed by the plant's CA: its subject common name (CN) is
    /// the device id, which is how ingest knows the device it speaks for.
    Certify {
        device_id: String,
        /// The CA certificate ingest trusts (`tls.client_ca_path`), PEM.
        #[arg(long)]
        ca_cert: PathBuf,
        /// The CA's private key, PEM.
        #[arg(long)]
        ca_key: PathBuf,
        /// Where `<device>.pem` and `<device>.key` (readable by its owner only) are written.
        #[arg(long)]
        out_dir: PathBuf,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 825, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
    },
    /// Create a CA for device certificates (`ca.pem`, and `ca.key` readable by its owner only), for a plant
    /// that has none. Keep the key off the servers: only `ca.pem` goes to ingest.
    Ca {
        #[arg(long)]
        out_dir: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "auscult device CA")]
        name: String,
        /// Days the CA is valid.
        #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
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
            token_file,
            exists_ok,
            database,
        } => {
            let mut client = database::connect(&database.url).await?;
            let token = match auscult_store::add_device(&mut client, &device_id, &description).await
            {
                Ok(token) => {
                    eprintln!("device {device_id} registered");
                    token
                }
                Err(auscult_store::StoreError::DeviceExists(_)) if exists_ok => {
                    eprintln!("device {device_id} was already registered; issued another token");
                    auscult_store::issue_token(&mut client, &device_id).await?
                }
                Err(e) => return Err(e.into()),
            };
            match token_file {
                Some(path) => {
                    write_secret(&path, &token)?;
                    eprintln!("its token is in {}", path.display());
                }
                None => {
                    eprintln!("its token (store it now, it is not shown again):");
                    println!("{token}");
                }
            }
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
        Command::Certify {
            device_id,
            ca_cert,
            ca_key,
            out_dir,
            days,
        } => {
            let issued = certificates::certify(&device_id, &ca_cert, &ca_key, &out_dir, days)?;
            eprintln!(
                "certificate for device {device_id} (CN={device_id}), valid until {}: {} with its key {}",
                issued.not_after.date(),
                issued.certificate.display(),
                issued.key.display()
            );
        }
        Command::Ca {
            out_dir,
            name,
            days,
        } => {
            let (certificate, key) = certificates::create_ca(&name, &out_dir, days)?;
            eprintln!(
                "CA {name:?}: {} (give it to ingest as tls.client_ca_path) and its key {} (keep it offline)",
                certificate.display(),
                key.display()
            );
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

/// Writes `secret` to `path`, readable by its owner only.
fn write_secret(path: &Path, secret: &str) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(file, "{secret}").with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
