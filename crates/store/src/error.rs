//! What can go wrong talking to the store. Variants exist where a caller branches on them.

/// An error from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {}", describe(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("could not get a database connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("invalid database url: {0}")]
    InvalidUrl(tokio_postgres::Error),
    #[error("database TLS: {0}")]
    DatabaseTls(String),
    #[error("invalid pool configuration: {0}")]
    PoolConfig(String),
    #[error(
        "database schema is at version {found}, this build needs {needed}: run `auscult migrate`"
    )]
    SchemaBehind { found: i32, needed: i32 },
    #[error(
        "database schema is at version {found}, newer than this build knows ({known}): upgrade this binary"
    )]
    SchemaAhead { found: i32, known: i32 },
    #[error("device {0:?} already exists")]
    DeviceExists(String),
    #[error("no device {0:?}")]
    UnknownDevice(String),
    #[error("device id {0}")]
    InvalidDeviceId(auscult_frame::IdentifierProblem),
    #[error("device description {0}")]
    InvalidDescription(String),
    #[error("invalid model: {0}")]
    InvalidModel(String),
    #[error("model version {0:?} is already published with different contents")]
    ModelVersionConflict(String),
    #[error("no model version {0:?}: `auscult model list` shows the published ones")]
    UnknownModel(String),
    #[error("{0}")]
    StoredAudio(#[from] auscult_frame::flac::FlacError),
    #[error("cannot encode a row for the database: {0}")]
    Encode(String),
    /// The database did not answer in time; a transaction's COMMIT may or may not have happened.
    #[error("no answer from the database within {0:?}: the outcome is unknown")]
    NoAnswer(std::time::Duration),
}

impl StoreError {
    /// Whether the database refused the data itself, for a reason that resending the same rows can never
    /// cure: a data exception (class 22: bad encoding, a NUL in text, a value out of range), an integrity
    /// rule (class 23, not the unique key, which deduplication settles) or a size limit (class 54).
    pub fn is_refusal(&self) -> bool {
        let Self::Db(e) = self else { return false };
        e.code().is_some_and(|code| {
            let code = code.code();
            (code.starts_with("22") || code.starts_with("23") || code.starts_with("54"))
                && code != tokio_postgres::error::SqlState::UNIQUE_VIOLATION.code()
        })
    }

    /// Whether retrying the same operation later may succeed (connection trouble, not a logic error).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Pool(_) | Self::NoAnswer(_) => true,
            Self::Db(e) => e.is_closed() || e.as_db_error().is_none(),
            _ => false,
        }
    }
}

/// tokio-postgres displays server errors as just "db error"; operators need the server's message.
fn describe(error: &tokio_postgres::Error) -> String {
    match (error.as_db_error(), std::error::Error::source(error)) {
        (Some(db), _) => format!("{}: {}", db.severity(), db.message()),
        (None, Some(source)) => format!("{error}: {source}"),
        (None, None) => error.to_string(),
    }
}
