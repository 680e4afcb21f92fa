//! How every service reads its settings: the type's defaults, then an optional TOML file, then
//! `AUSCULT__…` environment variables (`AUSCULT__DATABASE__URL` sets `database.url`). Services
//! validate the result and name the offending key with [`InvalidSetting`].

mod secure;

use std::path::Path;

use serde::de::DeserializeOwned;

pub use config::ConfigError;
pub use secure::{SecretFileError, ServerTls, read_credential};

/// A setting that makes no sense, named by its key.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {key}: {problem}")]
pub struct InvalidSetting {
    pub key: &'static str,
    pub problem: String,
}

impl InvalidSetting {
    pub fn new(key: &'static str, problem: impl Into<String>) -> Self {
        Self {
            key,
            problem: problem.into(),
        }
    }
}

/// Loads `T` from its defaults (`#[serde(default)]`) and a TOML text only (no environment): for checking
/// a settings file's text, and for fuzzing the loader.
pub fn load_toml<T: DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()?
        .try_deserialize()
}

/// Loads `T` from its defaults (`#[serde(default)]`), then `file` if given, then the environment.
pub fn load<T: DeserializeOwned>(file: Option<&Path>) -> Result<T, ConfigError> {
    let mut builder = config::Config::builder();
    if let Some(file) = file {
        builder = builder.add_source(config::File::from(file).required(true));
    }
    builder
        .add_source(
            config::Environment::with_prefix("AUSCULT")
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("analysis.endpoints")
                .with_list_parse_key("alerts.webhooks")
                .with_list_parse_key("elastic.urls")
                .try_parsing(true),
        )
        .build()?
        .try_deserialize()
}
