//! `auscult-listener`: turns stored frames into verdicts, alerts and health events.

use std::{net::SocketAddr, path::Path};

use auscult_listener::{InvalidSetting, Listeners, Settings};
use tokio_util::sync::CancellationToken;

struct Listener;

impl auscult_service::Service for Listener {
    const NAME: &'static str = "auscult-listener";
    const ABOUT: &'static str = "Claims analysis jobs as frames are stored, scores them on the analysis replicas, stores the verdicts, raises alerts and watches sensor health.";
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
        Ok(auscult_listener::run(settings, listeners, shutdown).await?)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    auscult_service::main::<Listener>().await
}
