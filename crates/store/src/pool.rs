//! The connection pool every service shares.

use std::{str::FromStr, time::Duration};

use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod};
use tokio_postgres::NoTls;

use crate::StoreError;

/// A pool of PostgreSQL connections.
pub type Pool = deadpool_postgres::Pool;

/// Builds a pool for `url` holding at most `max_size` connections. Connections are opened lazily, so this
/// succeeds even while the database is down; `application_name` shows up in `pg_stat_activity`.
pub fn connect_pool(
    url: &str,
    max_size: usize,
    application_name: &str,
) -> Result<Pool, StoreError> {
    let mut config = tokio_postgres::Config::from_str(url).map_err(StoreError::InvalidUrl)?;
    if config.get_application_name().is_none() {
        config.application_name(application_name);
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    // Keepalives notice a dead server (or a failed-over one) on an idle connection.
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30));
    let manager = Manager::from_config(
        config,
        NoTls,
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
