//! `auscult-analysis`: scores frames with the active model over gRPC.

use std::{net::SocketAddr, path::Path};

use auscult_analysis::{InvalidSetting, Listeners, Settings};
use tokio_util::sync::CancellationToken;

struct Analysis;

impl auscult_service::Service for Analysis {
    const NAME: &'static str = "auscult-analysis";
    const ABOUT: &'static str =
        "Scores machine sound with the active model: stored frames by id, or audio inline.";
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
        Ok(auscult_analysis::run(settings, listeners, shutdown).await?)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    auscult_service::main::<Analysis>().await
}
