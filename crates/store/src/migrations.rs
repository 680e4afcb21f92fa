//! Versioned schema migrations, embedded in every binary so that the schema a binary expects always ships
//! with it. `auscult migrate` applies them; services only check that the database is current.

use tokio_postgres::GenericClient;
use tracing::info;

use crate::StoreError;

/// (version, name, SQL). Append only: an applied migration is never edited, a change is a new migration.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "initial", include_str!("../migrations/0001_initial.sql")),
    (
        2,
        "model registry",
        include_str!("../migrations/0002_model_registry.sql"),
    ),
    (
        3,
        "results, alerts and sensor health",
        include_str!("../migrations/0003_results_alerts_health.sql"),
    ),
    (
        4,
        "search projection",
        include_str!("../migrations/0004_search_projection.sql"),
    ),
    (
        5,
        "partitioned storage",
        include_str!("../migrations/0005_partitioned_storage.sql"),
    ),
    (
        6,
        "outbox claims and the choice to index",
        include_str!("../migrations/0006_outbox_claims_and_indexing.sql"),
    ),
    (
        7,
        "a frame's trace context on its job",
        include_str!("../migrations/0007_job_trace_context.sql"),
    ),
    (
        8,
        "claims by stream",
        include_str!("../migrations/0008_claims_by_stream.sql"),
    ),
    (
        9,
        "outage retries apart from attempts",
        include_str!("../migrations/0009_outage_retries.sql"),
    ),
    (
        10,
        "waveform_summary",
        include_str!("../migrations/0010_waveform_summary.sql"),
    ),
    (
        11,
        "impulse_scales",
        include_str!("../migrations/0011_impulse_scales.sql"),
    ),
    (
        12,
        "result parts",
        include_str!("../migrations/0012_result_parts.sql"),
    ),
];

/// The schema version this build expects.
pub const LATEST_VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Arbitrary constant that identifies auscult's migration lock among advisory locks.
const MIGRATION_LOCK_KEY: i64 = 0x0061_7573_6375_6c74;

/// Applies every pending migration, each in its own transaction, and returns the versions applied. Safe to run
/// from several processes at once: an advisory lock serialises them and the later ones find nothing to do.
pub async fn migrate(client: &mut tokio_postgres::Client) -> Result<Vec<i32>, StoreError> {
    migrate_to(client, LATEST_VERSION).await
}

/// Applies the pending migrations up to `target` only: how an upgrade from an older release is rehearsed
/// (build the old schema, fill it, then migrate the rest of the way).
pub async fn migrate_to(
    client: &mut tokio_postgres::Client,
    target: i32,
) -> Result<Vec<i32>, StoreError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    let result = apply_pending(client, target).await;
    // Unlock even after a failure, so a retry in the same session does not deadlock on itself.
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await;
    let applied = result?;
    unlocked?;
    Ok(applied)
}

async fn apply_pending(
    client: &mut tokio_postgres::Client,
    target: i32,
) -> Result<Vec<i32>, StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version    integer PRIMARY KEY,
                name       text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await?;
    let current = schema_version(&*client).await?;
    if current > LATEST_VERSION {
        return Err(StoreError::SchemaAhead {
            found: current,
            known: LATEST_VERSION,
        });
    }
    let mut applied = Vec::new();
    for &(version, name, sql) in MIGRATIONS
        .iter()
        .filter(|(v, _, _)| *v > current && *v <= target)
    {
        let tx = client.transaction().await?;
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&version, &name],
        )
        .await?;
        tx.commit().await?;
        info!(version, name, "migration applied");
        applied.push(version);
    }
    Ok(applied)
}

/// The highest applied migration, 0 for an empty database.
pub async fn schema_version(client: &impl GenericClient) -> Result<i32, StoreError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .await?
        .try_get(0)?;
    if !exists {
        return Ok(0);
    }
    let row = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM schema_migrations",
            &[],
        )
        .await?;
    Ok(row.try_get(0)?)
}

/// How the database's schema compares with the one this build was written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaStatus {
    Current,
    /// Migrated by a newer release. Accepted: every migration keeps the release before it working
    /// (columns and tables are added first and dropped a release later), so the replicas of the old
    /// release keep serving while a rolling upgrade replaces them.
    Ahead {
        found: i32,
        known: i32,
    },
}

impl std::fmt::Display for SchemaStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Current => write!(f, "schema is at version {LATEST_VERSION}"),
            Self::Ahead { found, known } => write!(
                f,
                "schema is at version {found}, ahead of this build's {known} (an upgrade is rolling out)"
            ),
        }
    }
}

/// Fails unless the database holds at least the schema this build expects.
pub async fn check_schema(client: &impl GenericClient) -> Result<SchemaStatus, StoreError> {
    let found = schema_version(client).await?;
    match found.cmp(&LATEST_VERSION) {
        std::cmp::Ordering::Equal => Ok(SchemaStatus::Current),
        std::cmp::Ordering::Less => Err(StoreError::SchemaBehind {
            found,
            needed: LATEST_VERSION,
        }),
        std::cmp::Ordering::Greater => Ok(SchemaStatus::Ahead {
            found,
            known: LATEST_VERSION,
        }),
    }
}
