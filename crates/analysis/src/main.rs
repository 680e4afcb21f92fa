//! `auscult-analysis`: scores frames with the active model over gRPC.

use std::path::PathBuf;

use anyhow::Context;
use auscult_analysis::{Listeners, Settings};
use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Scores machine sound with the active model: stored frames by id, or audio inline.
///
/// Settings come from defaults, then --config, then AUSCULT__* environment variables
/// (e.g. AUSCULT__DATABASE__URL, AUSCULT__SCORING__WORKERS).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// TOML settings file.
    #[arg(long, env = "AUSCULT_CONFIG")]
    config: Option<PathBuf>,
    /// Check the settings and exit: 0 when the service would start with them, otherwise the
    /// offending key (for installers that render settings, and for their tests).
    #[arg(long)]
    check_config: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    auscult_telemetry::init_tracing(auscult_telemetry::LogFormat::from_env(), "info");
    let settings = Settings::load(args.config.as_deref()).context("loading settings")?;
    settings.validate()?;
    if args.check_config {
        println!("settings are valid");
        return Ok(());
    }
    let listeners = Listeners {
        grpc: TcpListener::bind(settings.listen_addr)
            .await
            .with_context(|| format!("binding listen_addr {}", settings.listen_addr))?,
        admin: TcpListener::bind(settings.admin_addr)
            .await
            .with_context(|| format!("binding admin_addr {}", settings.admin_addr))?,
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(auscult_telemetry::cancel_on_signal(shutdown.clone()));
    auscult_analysis::run(settings, listeners, shutdown)
        .await
        .context("running analysis")
}
