//! How every auscult service binary starts, in one place: the arguments (`--config`, `--check-config`), the
//! settings (defaults, then the TOML file, then `AUSCULT__…` variables, validated with the offending key
//! named), logging, the two sockets (gRPC and admin), and shutdown on SIGTERM or SIGINT. A service says
//! what differs by implementing [`Service`] — which [`service_main!`] does for a service library that
//! follows the common shape — and its `main` is one call to [`main`].

use std::{
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::Context;
use auscult_settings::InvalidSetting;
use clap::{CommandFactory, FromArgMatches, Parser};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

// What `service_main!` expands to needs, named through this crate.
#[doc(hidden)]
pub use anyhow;
pub use auscult_settings::{ConfigError, InvalidSetting as SettingError};
#[doc(hidden)]
pub use tokio_util::sync::CancellationToken as Shutdown;

/// The whole `main.rs` of a service binary whose library crate `$service` exports `Settings` (with
/// `load`, `validate`, `listen_addr` and `admin_addr`), `Listeners` (this crate's) and
/// `run(settings, listeners, shutdown)`:
/// `auscult_service::service_main!(auscult_ingest, "auscult-ingest", "Receives …");`
#[macro_export]
macro_rules! service_main {
    ($service:ident, $name:literal, $about:literal) => {
        /// The binary, as the shared start-up path sees it.
        struct Binary;

        impl $crate::Service for Binary {
            const NAME: &'static str = $name;
            const ABOUT: &'static str = $about;
            type Settings = $service::Settings;

            fn load(
                file: Option<&::std::path::Path>,
            ) -> Result<$service::Settings, $crate::ConfigError> {
                $service::Settings::load(file)
            }

            fn validate(settings: &$service::Settings) -> Result<(), $crate::SettingError> {
                settings.validate()
            }

            fn addresses(
                settings: &$service::Settings,
            ) -> (::std::net::SocketAddr, ::std::net::SocketAddr) {
                (settings.listen_addr, settings.admin_addr)
            }

            async fn run(
                settings: $service::Settings,
                listeners: $crate::Listeners,
                shutdown: $crate::Shutdown,
            ) -> $crate::anyhow::Result<()> {
                Ok($service::run(settings, listeners, shutdown).await?)
            }
        }

        #[tokio::main]
        async fn main() -> $crate::anyhow::Result<()> {
            $crate::main::<Binary>().await
        }
    };
}

/// The sockets a service serves on, bound by the caller (port 0 in tests).
#[derive(Debug)]
pub struct Listeners {
    pub grpc: TcpListener,
    pub admin: TcpListener,
}

/// What makes one service binary different from the others.
pub trait Service {
    /// The binary's name ("auscult-ingest").
    const NAME: &'static str;
    /// What `--help` says it does.
    const ABOUT: &'static str;
    type Settings;

    /// Loads the settings: defaults, then `file`, then the environment.
    fn load(file: Option<&Path>) -> Result<Self::Settings, ConfigError>;
    /// Checks relations between settings that types cannot express.
    fn validate(settings: &Self::Settings) -> Result<(), InvalidSetting>;
    /// Where the gRPC and the admin sockets listen.
    fn addresses(settings: &Self::Settings) -> (SocketAddr, SocketAddr);
    /// Runs until `shutdown` is cancelled.
    fn run(
        settings: Self::Settings,
        listeners: Listeners,
        shutdown: CancellationToken,
    ) -> impl Future<Output = anyhow::Result<()>>;
}

/// The arguments every service takes.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Settings come from defaults, then --config, then AUSCULT__* environment variables \
                  (sections joined by __, e.g. AUSCULT__DATABASE__URL)."
)]
struct Args {
    /// TOML settings file.
    #[arg(long, env = "AUSCULT_CONFIG")]
    config: Option<PathBuf>,
    /// Check the settings and exit: 0 when the service would start with them, otherwise the offending
    /// key (for installers that render settings, and for their tests).
    #[arg(long)]
    check_config: bool,
}

/// A service binary's `main`: parse the arguments, load and check the settings, start logging, bind the
/// sockets, and run until a signal asks it to stop.
pub async fn main<S: Service>() -> anyhow::Result<()> {
    let matches = Args::command().name(S::NAME).about(S::ABOUT).get_matches();
    let args = Args::from_arg_matches(&matches)?;
    // Held to the end of `main`: dropping it sends the last spans.
    let _tracing =
        auscult_telemetry::init_tracing(auscult_telemetry::LogFormat::from_env(), "info", S::NAME)?;
    let settings = S::load(args.config.as_deref()).context("loading settings")?;
    S::validate(&settings)?;
    if args.check_config {
        println!("settings are valid");
        return Ok(());
    }
    let (grpc, admin) = S::addresses(&settings);
    let listeners = Listeners {
        grpc: TcpListener::bind(grpc)
            .await
            .with_context(|| format!("binding listen_addr {grpc}"))?,
        admin: TcpListener::bind(admin)
            .await
            .with_context(|| format!("binding admin_addr {admin}"))?,
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(auscult_telemetry::cancel_on_signal(shutdown.clone()));
    S::run(settings, listeners, shutdown)
        .await
        .with_context(|| format!("running {}", S::NAME))
}
