//! Typed settings: defaults, then an optional TOML file, then `AUSCULT__…` environment variables
//! (e.g. `AUSCULT__DATABASE__URL`, `AUSCULT__SCORING__WORKERS`), validated at start.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

pub use auscult_settings::InvalidSetting;

/// Everything the analysis service can be told.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Where listeners connect (gRPC).
    pub listen_addr: SocketAddr,
    /// Where `/metrics`, `/livez` and `/readyz` are served.
    pub admin_addr: SocketAddr,
    pub database: DatabaseSettings,
    pub scoring: ScoringSettings,
    pub model: ModelSettings,
    /// Serve TLS (with `client_ca_path`, mutual TLS).
    pub tls: Option<auscult_settings::ServerTls>,
    pub auth: AuthSettings,
    /// How long shutdown may take to finish the requests in flight.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

/// Who may call `Analysis.Score`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// A file holding the secret every caller presents as `authorization: Bearer <secret>` (the listeners'
    /// `analysis.credential_file`). Unset: no credential asked, for a replica reachable by the listeners only.
    pub credential_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// PostgreSQL connection URL. Never logged: it may hold a password.
    pub url: String,
    pub pool_size: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoringSettings {
    /// Scoring threads; 0 means one per core.
    pub workers: usize,
    /// Frames that may wait for a thread; beyond it requests get RESOURCE_EXHAUSTED.
    pub queue_depth: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSettings {
    /// Serve this model file instead of following the registry's active model.
    pub file: Option<PathBuf>,
    /// How often the registry is checked for a newly activated model.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen_addr: SocketAddr::from(([0, 0, 0, 0], 50052)),
            admin_addr: SocketAddr::from(([0, 0, 0, 0], 9465)),
            database: DatabaseSettings::default(),
            scoring: ScoringSettings::default(),
            model: ModelSettings::default(),
            tls: None,
            auth: AuthSettings::default(),
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/auscult".into(),
            pool_size: 4,
        }
    }
}

impl Default for ScoringSettings {
    fn default() -> Self {
        Self {
            workers: 0,
            queue_depth: 256,
        }
    }
}

impl Default for ModelSettings {
    fn default() -> Self {
        Self {
            file: None,
            poll_interval: Duration::from_secs(2),
        }
    }
}

impl Settings {
    /// Loads defaults, then `file` if given, then the environment.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, auscult_settings::ConfigError> {
        auscult_settings::load(file)
    }

    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let fail = |key, problem: &str| {
            Err(InvalidSetting {
                key,
                problem: problem.into(),
            })
        };
        if !(1..=100_000).contains(&self.scoring.queue_depth) {
            return fail("scoring.queue_depth", "must be between 1 and 100000");
        }
        if self.scoring.workers > 1024 {
            return fail("scoring.workers", "must be at most 1024");
        }
        if self.database.pool_size == 0 {
            return fail("database.pool_size", "must be at least 1");
        }
        if self.model.poll_interval < Duration::from_millis(100) {
            return fail("model.poll_interval", "must be at least 100ms");
        }
        Ok(())
    }

    /// Scoring threads to start.
    pub fn workers(&self) -> usize {
        match self.scoring.workers {
            0 => std::thread::available_parallelism().map_or(2, usize::from),
            n => n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_their_key() {
        Settings::default().validate().expect("defaults");
        let mut settings = Settings::default();
        settings.scoring.queue_depth = 0;
        assert_eq!(
            settings.validate().map_err(|e| e.key).err(),
            Some("scoring.queue_depth")
        );
    }
}
