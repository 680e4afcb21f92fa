//! `auscult-ingest`: receives frames from gateways over gRPC and stores them in PostgreSQL.

use std::{net::SocketAddr, path::Path};

use auscult_ingest::{InvalidSetting, Listeners, Settings};
use tokio_util::sync::CancellationToken;

struct Ingest;

impl auscult_service::Service for Ingest {
    const NAME: &'static str = "auscult-ingest";
    const ABOUT: &'static str =
        "Receives microphone frames from gateways and stores them durably, exactly once.";
    type Settings = Settings;

    fn load(file: Option<&Path>) -> Result<Settings, auscult_settings::ConfigError> {
        Settings::load(file)
    }

    fn validate(settings: &Settings) -> Result<(), InvalidSetting> {
        settings.validate()
    }

    fn addresses(settings: &Settings) -> (SocketAddr, SocketAddr) {
        (settings.listen_addr, settings.admin_addr)
    }

    async fn run(
        settings: Settings,
        listeners: Listeners,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        Ok(auscult_ingest::run(settings, listeners, shutdown).await?)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    auscult_service::main::<Ingest>().await
}
