//! The connection pool every service shares.

use std::{str::FromStr, time::Duration};

use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod};
use tokio_postgres::{Socket, tls::MakeTlsConnect};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::{StoreError, tls};

/// A pool of PostgreSQL connections.
pub type Pool = deadpool_postgres::Pool;

/// Bounds on every session a service opens, so that no query, lock wait, open transaction or dead peer holds
/// a connection (and the request behind it) forever. A primary that vanishes without resetting its
/// connections — a lost machine, a network partition, a failover — would otherwise leave a query waiting
/// for the kernel's retransmission limit, about 15 minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Longest statement (`statement_timeout`); zero means no limit. Above every statement the services
    /// run; migrations, which may run longer, use connections without it.
    pub statement_timeout: Duration,
    /// Longest wait for a lock (`lock_timeout`).
    pub lock_timeout: Duration,
    /// Longest pause inside an open transaction (`idle_in_transaction_session_timeout`): the server ends
    /// a session that holds a transaction open this long without a statement.
    pub idle_in_transaction_timeout: Duration,
    /// Longest time sent data may stay unacknowledged by the server's machine before the connection is
    /// dropped (`TCP_USER_TIMEOUT`); keepalives probe idle connections the same way.
    pub tcp_user_timeout: Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            statement_timeout: Duration::from_secs(120),
            lock_timeout: Duration::from_secs(30),
            idle_in_transaction_timeout: Duration::from_secs(120),
            tcp_user_timeout: Duration::from_secs(20),
        }
    }
}

/// What opening a session needs: the connection settings, and TLS as the URL's `sslmode` and
/// `sslrootcert` ask (see [`crate::tls`]).
#[derive(Clone)]
pub struct SessionConfig {
    pub postgres: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
}

/// The connection half of a session, to be polled (spawned) for the client to work.
pub type SessionConnection =
    tokio_postgres::Connection<Socket, <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream>;

impl SessionConfig {
    /// Opens one session.
    pub async fn connect(
        &self,
    ) -> Result<(tokio_postgres::Client, SessionConnection), tokio_postgres::Error> {
        self.postgres.connect(self.tls.clone()).await
    }
}

impl std::fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password stays out: tokio-postgres' own Debug redacts it.
        f.debug_struct("SessionConfig")
            .field("postgres", &self.postgres)
            .finish_non_exhaustive()
    }
}

/// The connection settings of `url` with `limits` applied: server-side timeouts in the session's
/// options (after any the URL gives, which win), TCP user timeout and keepalives, a connect timeout
/// unless the URL sets one, `application_name` unless the URL sets one, and TLS.
pub fn session_config(
    url: &str,
    application_name: &str,
    limits: &SessionLimits,
) -> Result<SessionConfig, StoreError> {
    let tls = tls::split_tls(url)?;
    let mut config = tokio_postgres::Config::from_str(&tls.url).map_err(StoreError::InvalidUrl)?;
    if config.get_application_name().is_none() {
        config.application_name(application_name);
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    let ms = |d: Duration| d.as_millis();
    let mut options = format!(
        "-c statement_timeout={} -c lock_timeout={} -c idle_in_transaction_session_timeout={}",
        ms(limits.statement_timeout),
        ms(limits.lock_timeout),
        ms(limits.idle_in_transaction_timeout)
    );
    if let Some(given) = config.get_options().filter(|o| !o.trim().is_empty()) {
        // Later settings win: what the URL says overrides these defaults.
        options = format!("{options} {given}");
    }
    config.options(options);
    config
        .tcp_user_timeout(limits.tcp_user_timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_retries(3);
    Ok(SessionConfig {
        postgres: config,
        tls: tls::connector(&tls.verification)?,
    })
}

/// Builds a pool for `url` holding at most `max_size` connections, each bounded by the default
/// [`SessionLimits`]. Connections are opened lazily, so this succeeds even while the database is down;
/// `application_name` shows up in `pg_stat_activity`.
pub fn connect_pool(
    url: &str,
    max_size: usize,
    application_name: &str,
) -> Result<Pool, StoreError> {
    connect_pool_with(url, max_size, application_name, &SessionLimits::default())
}

/// [`connect_pool`] with `limits` of its own.
pub fn connect_pool_with(
    url: &str,
    max_size: usize,
    application_name: &str,
    limits: &SessionLimits,
) -> Result<Pool, StoreError> {
    let config = session_config(url, application_name, limits)?;
    let manager = Manager::from_config(
        config.postgres,
        config.tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    deadpool_postgres::Pool::builder(manager)
        .max_size(max_size)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(10)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::PoolConfig(e.to_string()))
}
