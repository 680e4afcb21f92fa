//! How CLI commands reach PostgreSQL.

use anyhow::Context;

/// `--database-url`, or `DATABASE_URL`.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// PostgreSQL connection URL.
    #[arg(long = "database-url", env = "DATABASE_URL", hide_env_values = true)]
    pub url: String,
}

/// Opens one connection, driven in the background. Bounded like the services' sessions, except that a
/// statement may run as long as it needs: migrations and reindexing on a large database take a while.
pub async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let limits = auscult_store::SessionLimits {
        statement_timeout: std::time::Duration::ZERO,
        ..auscult_store::SessionLimits::default()
    };
    let config = auscult_store::session_config(url, "auscult", &limits)
        .with_context(|| format!("PostgreSQL URL {}", redact(url)))?;
    let (client, connection) = config
        .connect()
        .await
        .with_context(|| format!("connecting to PostgreSQL at {}", redact(url)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!("database connection closed: {e}");
        }
    });
    Ok(client)
}

/// Opens one connection, retrying for up to `wait` while PostgreSQL is not reachable yet (a database
/// starting beside the command, as in a compose file or a fresh Kubernetes install). Each failure is
/// reported on stderr so a waiting job shows why it waits.
pub async fn connect_waiting(
    url: &str,
    wait: std::time::Duration,
) -> anyhow::Result<tokio_postgres::Client> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut pause = std::time::Duration::from_millis(250);
    loop {
        match connect(url).await {
            Ok(client) => return Ok(client),
            Err(e) if tokio::time::Instant::now() + pause < deadline => {
                eprintln!("waiting for PostgreSQL: {e:#}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(5));
            }
            Err(e) => {
                return Err(e.context(format!(
                    "PostgreSQL was not reachable within {}",
                    humantime::format_duration(wait)
                )));
            }
        }
    }
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &credentials[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            super::redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
