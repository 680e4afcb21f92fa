//! What is stored, per kind and partition, what leaves next and when: `auscult retention status`.

use std::time::SystemTime;

use serde::Serialize;

use super::policy::{PartitionedTable, RetentionPolicy};
use crate::StoreError;

/// The whole picture.
#[derive(Debug, Clone, Serialize)]
pub struct LifecycleStatus {
    /// The policy the last maintenance pass applied (the default if no pass has run yet).
    pub policy: RetentionPolicy,
    /// Which instance ran the last pass, and when; `None` before the first.
    pub last_pass_by: Option<String>,
    pub last_pass_at: Option<SystemTime>,
    pub last_pass: Option<serde_json::Value>,
    pub partitioned: Vec<PartitionedKind>,
    pub kept_audio: KeptAudio,
    pub queues: Vec<QueueSize>,
}

/// One partitioned table.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionedKind {
    pub kind: &'static str,
    pub table: &'static str,
    pub retention_s: u64,
    pub bytes: i64,
    pub partitions: Vec<PartitionStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionStatus {
    pub name: String,
    /// `None` for the partition that holds the rows from before partitioning.
    pub from: Option<SystemTime>,
    pub to: SystemTime,
    /// The planner's estimate (exact after `ANALYZE`); counting a large partition would read all of it.
    pub rows_estimate: i64,
    pub bytes: i64,
    /// When a pass drops it: its upper bound plus the retention.
    pub drops_at: SystemTime,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeptAudio {
    pub frames: i64,
    pub bytes: i64,
    pub oldest_captured_at: Option<SystemTime>,
    /// When the oldest kept frame leaves.
    pub next_prune_at: Option<SystemTime>,
}

/// A table pruned by deletes rather than by partitions.
#[derive(Debug, Clone, Serialize)]
pub struct QueueSize {
    pub table: &'static str,
    pub rows: i64,
    /// Rows the next pass deletes (done jobs past `done_jobs`, resolved alerts past `alerts`).
    pub prunable: i64,
    pub bytes: i64,
}

impl LifecycleStatus {
    /// The next partition to go, over all kinds: (table, partition, when).
    pub fn next_drop(&self) -> Option<(&'static str, &str, SystemTime)> {
        self.partitioned
            .iter()
            .flat_map(|k| {
                k.partitions
                    .iter()
                    .map(move |p| (k.table, p.name.as_str(), p.drops_at))
            })
            .min_by_key(|(_, _, at)| *at)
    }
}

/// Reads the status as of `now`.
pub async fn lifecycle_status(
    client: &impl tokio_postgres::GenericClient,
    now: SystemTime,
) -> Result<LifecycleStatus, StoreError> {
    let state = client
        .query_opt(
            "SELECT policy::text, last_pass::text, run_by, ran_at FROM lifecycle_state",
            &[],
        )
        .await?;
    let (policy, last_pass, last_pass_by, last_pass_at) = match state {
        Some(row) => {
            let policy: String = row.try_get(0)?;
            let last_pass: String = row.try_get(1)?;
            (
                // A policy written by another release may have keys this one does not know: fall back to
                // the defaults for the status rather than fail.
                serde_json::from_str(&policy).unwrap_or_default(),
                serde_json::from_str(&last_pass).ok(),
                Some(row.try_get(2)?),
                Some(row.try_get(3)?),
            )
        }
        None => (RetentionPolicy::default(), None, None, None),
    };

    let mut partitioned = Vec::new();
    for table in PartitionedTable::ALL {
        let retention = policy.retention_of(table);
        let rows = client
            .query(
                "SELECT partition, CASE WHEN isfinite(lower_bound) THEN lower_bound END, upper_bound,
                        greatest(c.reltuples, 0)::int8, pg_total_relation_size(p.partition_oid)
                 FROM auscult_partitions p JOIN pg_class c ON c.oid = p.partition_oid
                 WHERE parent = $1 AND isfinite(upper_bound)
                 ORDER BY upper_bound",
                &[&table.table()],
            )
            .await?;
        let mut partitions = Vec::with_capacity(rows.len());
        for row in &rows {
            let to: SystemTime = row.try_get(2)?;
            partitions.push(PartitionStatus {
                name: row.try_get(0)?,
                from: row.try_get(1)?,
                to,
                rows_estimate: row.try_get(3)?,
                bytes: row.try_get(4)?,
                drops_at: to + retention,
            });
        }
        partitioned.push(PartitionedKind {
            kind: table.kind(),
            table: table.table(),
            retention_s: retention.as_secs(),
            bytes: partitions.iter().map(|p| p.bytes).sum(),
            partitions,
        });
    }

    let kept = client
        .query_one(
            "SELECT count(*), pg_total_relation_size('frames_kept'), min(captured_at) FROM frames_kept",
            &[],
        )
        .await?;
    let oldest: Option<SystemTime> = kept.try_get(2)?;
    let kept_audio = KeptAudio {
        frames: kept.try_get(0)?,
        bytes: kept.try_get(1)?,
        oldest_captured_at: oldest,
        next_prune_at: oldest.map(|t| t + policy.kept_audio),
    };

    let queues = client
        .query_one(
            "SELECT (SELECT count(*) FROM analysis_jobs),
                    (SELECT count(*) FROM analysis_jobs WHERE state = 'done' AND updated_at < $1),
                    pg_total_relation_size('analysis_jobs'),
                    (SELECT count(*) FROM search_outbox),
                    pg_total_relation_size('search_outbox'),
                    (SELECT count(*) FROM alerts),
                    (SELECT count(*) FROM alerts WHERE state = 'resolved' AND resolved_at < $2),
                    pg_total_relation_size('alerts') + pg_total_relation_size('alert_deliveries')",
            &[&(now - policy.done_jobs), &(now - policy.alerts)],
        )
        .await?;
    let queues = vec![
        QueueSize {
            table: "analysis_jobs",
            rows: queues.try_get(0)?,
            prunable: queues.try_get(1)?,
            bytes: queues.try_get(2)?,
        },
        QueueSize {
            table: "search_outbox",
            rows: queues.try_get(3)?,
            // The indexer deletes what it sent; what remains is waiting for Elasticsearch.
            prunable: 0,
            bytes: queues.try_get(4)?,
        },
        QueueSize {
            table: "alerts",
            rows: queues.try_get(5)?,
            prunable: queues.try_get(6)?,
            bytes: queues.try_get(7)?,
        },
    ];

    Ok(LifecycleStatus {
        policy,
        last_pass_by,
        last_pass_at,
        last_pass,
        partitioned,
        kept_audio,
        queues,
    })
}
