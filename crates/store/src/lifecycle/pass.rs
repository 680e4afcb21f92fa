//! One maintenance pass: partitions ahead of the data, expired partitions dropped whole (after the audio
//! that verdicts and alerts point at is copied out), queues pruned by bounded deletes.
//!
//! Nothing here holds a long lock on a table that services write: partitions are attached and detached
//! with `SHARE UPDATE EXCLUSIVE` (`ATTACH`, `DETACH … CONCURRENTLY`), which writers and readers never wait
//! for, and every delete is a short statement of at most [`DELETE_BATCH`] rows.

use std::time::{Instant, SystemTime};

use serde::Serialize;
use tokio_postgres::types::ToSql;
use tracing::{info, instrument};

use super::policy::{PartitionedTable, RetentionPolicy};
use crate::StoreError;

/// Rows per bounded delete: short enough that a delete never holds its row locks for long.
const DELETE_BATCH: i64 = 5_000;
/// Bounded deletes per kind and pass; whatever remains is pruned by the next pass.
const MAX_DELETE_BATCHES: usize = 200;
/// Identifies the maintenance pass among advisory locks (two-key form, beside the stream locks).
const PASS_LOCK: (i32, i32) = (0x6175_7363, -1);

/// Columns of `frames`, in the order `frames_kept` shares.
const FRAME_COLUMNS: &str = "id, device_id, sensor_id, stream_epoch, seq, captured_at, received_at, sample_rate_hz, \
                             channels, encoding, samples, samples_sha256, rms_dbfs, peak_dbfs, crest_factor";

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PassReport {
    pub partitions_created: Vec<String>,
    pub partitions_dropped: Vec<DroppedPartition>,
    /// Frames copied into `frames_kept` before their partition was dropped.
    pub frames_kept: u64,
    pub done_jobs_pruned: u64,
    /// Jobs, and search documents still queued, of rows whose partition was dropped.
    pub orphans_pruned: u64,
    pub kept_frames_pruned: u64,
    pub alerts_pruned: u64,
    /// High-water marks of streams whose frames have all left.
    pub stream_marks_pruned: u64,
    pub took_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DroppedPartition {
    pub table: &'static str,
    pub partition: String,
    pub bytes: i64,
}

impl PassReport {
    pub fn bytes_freed(&self) -> i64 {
        self.partitions_dropped.iter().map(|p| p.bytes).sum()
    }
}

/// Whether the pass ran.
#[derive(Debug, Clone, PartialEq)]
pub enum PassOutcome {
    Ran(PassReport),
    /// Another instance was running a pass; passes are idempotent, so nothing is lost by skipping.
    Busy,
}

/// Runs one pass as of `now` on a connection of its own (the pass runs statements, such as
/// `DETACH … CONCURRENTLY`, that cannot run inside a transaction, and sets its own timeouts). `run_by` names
/// the instance in `lifecycle_state`. One pass runs at a time across every instance.
#[instrument(skip_all, fields(run_by))]
pub async fn run_pass(
    client: &mut tokio_postgres::Client,
    policy: &RetentionPolicy,
    now: SystemTime,
    run_by: &str,
) -> Result<PassOutcome, StoreError> {
    let locked: bool = client
        .query_one(
            "SELECT pg_try_advisory_lock($1, $2)",
            &[&PASS_LOCK.0, &PASS_LOCK.1],
        )
        .await?
        .try_get(0)?;
    if !locked {
        return Ok(PassOutcome::Busy);
    }
    let result = pass(client, policy, now, run_by).await;
    let unlocked = client
        .execute(
            "SELECT pg_advisory_unlock($1, $2)",
            &[&PASS_LOCK.0, &PASS_LOCK.1],
        )
        .await;
    let report = result?;
    unlocked?;
    Ok(PassOutcome::Ran(report))
}

async fn pass(
    client: &mut tokio_postgres::Client,
    policy: &RetentionPolicy,
    now: SystemTime,
    run_by: &str,
) -> Result<PassReport, StoreError> {
    let started = Instant::now();
    let mut report = PassReport::default();
    for table in PartitionedTable::ALL {
        let (from, until) = coverage(table, policy, now);
        report
            .partitions_created
            .extend(ensure_partitions(client, table, policy, from, until).await?);
    }
    for table in PartitionedTable::ALL {
        let cutoff = now - policy.retention_of(table);
        for (partition, lower, upper, bytes) in expired_partitions(client, table, cutoff).await? {
            if table == PartitionedTable::Frames {
                report.frames_kept += keep_audio(client, &partition, lower, upper, policy).await?;
            }
            detach(client, table, &partition).await?;
            report.orphans_pruned += prune_orphans(client, table, &partition).await?;
            client
                .batch_execute(&format!("DROP TABLE {}", quote_ident(&partition)))
                .await?;
            info!(table = table.table(), %partition, bytes, "partition dropped");
            report.partitions_dropped.push(DroppedPartition {
                table: table.table(),
                partition,
                bytes,
            });
        }
    }
    report.done_jobs_pruned = bounded_delete(
        client,
        "DELETE FROM analysis_jobs WHERE state = 'done' AND frame_id = ANY(ARRAY(
             SELECT frame_id FROM analysis_jobs WHERE state = 'done' AND updated_at < $1
             ORDER BY updated_at LIMIT $2))",
        &[&(now - policy.done_jobs)],
    )
    .await?;
    report.kept_frames_pruned = bounded_delete(
        client,
        "DELETE FROM frames_kept WHERE id = ANY(ARRAY(
             SELECT id FROM frames_kept WHERE captured_at < $1 ORDER BY captured_at LIMIT $2))",
        &[&(now - policy.kept_audio)],
    )
    .await?;
    report.alerts_pruned = bounded_delete(
        client,
        "DELETE FROM alerts WHERE id = ANY(ARRAY(
             SELECT id FROM alerts WHERE state = 'resolved' AND resolved_at < $1 ORDER BY resolved_at LIMIT $2))",
        &[&(now - policy.alerts)],
    )
    .await?;
    // A stream's mark goes once no partition left can hold its frames: all of them were captured before the
    // oldest partition begins (never while the partition adopted at the upgrade, unbounded below, remains).
    report.stream_marks_pruned = bounded_delete(
        client,
        "DELETE FROM frame_streams WHERE (device_id, sensor_id, stream_epoch) IN (
             SELECT device_id, sensor_id, stream_epoch FROM frame_streams
             WHERE last_captured_at < (SELECT min(lower_bound) FROM auscult_partitions WHERE parent = 'frames')
             ORDER BY last_captured_at LIMIT $1)",
        &[],
    )
    .await?;
    report.took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    record_pass(client, policy, &report, run_by).await?;
    Ok(report)
}

/// The range each table must have partitions for. Frames may arrive up to `raw_audio` late (ingest refuses
/// older ones), verdicts carry their frame's capture time, health events the present.
fn coverage(
    table: PartitionedTable,
    policy: &RetentionPolicy,
    now: SystemTime,
) -> (SystemTime, SystemTime) {
    let ahead = policy.partitions_ahead.max(table.step(policy).at_least());
    match table {
        PartitionedTable::Frames | PartitionedTable::Results => {
            (now - policy.raw_audio, now + ahead)
        }
        PartitionedTable::HealthEvents => (now, now + ahead),
    }
}

/// Creates the missing partitions of `table` over [from, until); returns their names.
pub(crate) async fn ensure_partitions(
    client: &tokio_postgres::Client,
    table: PartitionedTable,
    policy: &RetentionPolicy,
    from: SystemTime,
    until: SystemTime,
) -> Result<Vec<String>, StoreError> {
    let (months, seconds) = table.step(policy).interval_parts();
    let rows = client
        .query(
            "SELECT auscult_ensure_partitions($1::text::regclass, make_interval(months => $2, secs => $3), $4, $5)",
            &[&table.table(), &months, &seconds, &from, &until],
        )
        .await?;
    rows.iter()
        .map(|row| row.try_get(0).map_err(StoreError::from))
        .collect()
}

/// Partitions of `table` entirely before `cutoff`, oldest first: (name, lower bound, upper bound, bytes).
/// The lower bound is `None` for the partition that adopted the rows from before partitioning.
async fn expired_partitions(
    client: &tokio_postgres::Client,
    table: PartitionedTable,
    cutoff: SystemTime,
) -> Result<Vec<(String, Option<SystemTime>, SystemTime, i64)>, StoreError> {
    let rows = client
        .query(
            "SELECT partition, CASE WHEN isfinite(lower_bound) THEN lower_bound END, upper_bound,
                    pg_total_relation_size(partition_oid)
             FROM auscult_partitions
             WHERE parent = $1 AND isfinite(upper_bound) AND upper_bound <= $2
             ORDER BY upper_bound",
            &[&table.table(), &cutoff],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get(0)?,
                row.try_get(1)?,
                row.try_get(2)?,
                row.try_get(3)?,
            ))
        })
        .collect()
}

/// Copies the frames of an expiring partition that lie within `kept_margin` of an anomalous verdict or of
/// an alert's span into `frames_kept`; returns how many. The windows are found first (anomalous verdicts
/// are rare), then the partition is read through its (sensor, time) index.
async fn keep_audio(
    client: &tokio_postgres::Client,
    partition: &str,
    lower: Option<SystemTime>,
    upper: SystemTime,
    policy: &RetentionPolicy,
) -> Result<u64, StoreError> {
    let margin = policy.kept_margin.as_secs_f64();
    let lower = lower.unwrap_or(SystemTime::UNIX_EPOCH);
    let copied = client
        .execute(
            &format!(
                "WITH windows AS (
                    SELECT device_id, sensor_id,
                           captured_at - make_interval(secs => $3) AS lo,
                           captured_at + make_interval(secs => $3) AS hi
                    FROM analysis_results
                    WHERE anomalous
                      AND captured_at >= $1::timestamptz - make_interval(secs => $3)
                      AND captured_at < $2::timestamptz + make_interval(secs => $3)
                  UNION ALL
                    SELECT a.device_id, a.sensor_id,
                           span.first_at - make_interval(secs => $3),
                           CASE WHEN a.state = 'firing' THEN 'infinity'
                                ELSE span.last_at + make_interval(secs => $3) END
                    FROM alerts a
                    CROSS JOIN LATERAL (
                        SELECT (SELECT min(captured_at) FROM analysis_results WHERE frame_id = a.first_frame_id)
                                   AS first_at,
                               (SELECT max(captured_at) FROM analysis_results WHERE frame_id = a.last_frame_id)
                                   AS last_at
                    ) span
                    WHERE span.first_at IS NOT NULL
                )
                INSERT INTO frames_kept ({FRAME_COLUMNS})
                SELECT {FRAME_COLUMNS} FROM {table} f
                WHERE EXISTS (SELECT 1 FROM windows w
                              WHERE w.device_id = f.device_id AND w.sensor_id = f.sensor_id
                                AND f.captured_at BETWEEN w.lo AND w.hi)
                ON CONFLICT (id) DO NOTHING",
                table = quote_ident(partition),
            ),
            &[&lower, &upper, &margin],
        )
        .await?;
    if copied > 0 {
        info!(%partition, frames = copied, "audio kept past its partition");
    }
    Ok(copied)
}

/// Detaches a partition without blocking the parent's writers. A detach interrupted earlier (the pass died
/// between its two transactions) is finished instead.
async fn detach(
    client: &tokio_postgres::Client,
    table: PartitionedTable,
    partition: &str,
) -> Result<(), StoreError> {
    let pending: bool = client
        .query_one(
            "SELECT coalesce((SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = $1::text::regclass), false)",
            &[&quote_ident(partition)],
        )
        .await?
        .try_get(0)?;
    let mode = if pending { "FINALIZE" } else { "CONCURRENTLY" };
    client
        .batch_execute(&format!(
            "ALTER TABLE {} DETACH PARTITION {} {mode}",
            table.table(),
            quote_ident(partition)
        ))
        .await?;
    Ok(())
}

/// Deletes, in bounded batches, the queue rows that point at rows of a detached partition: their jobs (for
/// frames) and their pending search documents.
async fn prune_orphans(
    client: &tokio_postgres::Client,
    table: PartitionedTable,
    partition: &str,
) -> Result<u64, StoreError> {
    let partition = quote_ident(partition);
    let kind = match table {
        PartitionedTable::Frames => "frame",
        PartitionedTable::Results => "result",
        PartitionedTable::HealthEvents => "health",
    };
    let mut pruned = 0;
    if table == PartitionedTable::Frames {
        pruned += bounded_delete(
            client,
            &format!(
                "DELETE FROM analysis_jobs WHERE frame_id = ANY(ARRAY(
                     SELECT j.frame_id FROM analysis_jobs j JOIN {partition} p ON p.id = j.frame_id LIMIT $1))"
            ),
            &[],
        )
        .await?;
    }
    pruned += bounded_delete(
        client,
        &format!(
            "DELETE FROM search_outbox WHERE id = ANY(ARRAY(
                 SELECT o.id FROM search_outbox o JOIN {partition} p ON p.id = o.ref_id
                 WHERE o.kind = '{kind}' LIMIT $1))"
        ),
        &[],
    )
    .await?;
    Ok(pruned)
}

/// Runs `statement` (its parameters: `params`, then a row limit) until it deletes fewer rows than the
/// limit, at most [`MAX_DELETE_BATCHES`] times; returns the rows deleted.
async fn bounded_delete(
    client: &tokio_postgres::Client,
    statement: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, StoreError> {
    let statement = client.prepare(statement).await?;
    let mut params = params.to_vec();
    params.push(&DELETE_BATCH);
    let mut total = 0;
    for _ in 0..MAX_DELETE_BATCHES {
        let deleted = client.execute(&statement, &params).await?;
        total += deleted;
        if deleted < DELETE_BATCH.unsigned_abs() {
            break;
        }
    }
    Ok(total)
}

async fn record_pass(
    client: &tokio_postgres::Client,
    policy: &RetentionPolicy,
    report: &PassReport,
    run_by: &str,
) -> Result<(), StoreError> {
    let policy = serde_json::to_string(policy).map_err(|e| StoreError::Encode(e.to_string()))?;
    let report = serde_json::to_string(report).map_err(|e| StoreError::Encode(e.to_string()))?;
    client
        .execute(
            "INSERT INTO lifecycle_state (policy, last_pass, run_by) VALUES ($1::text::jsonb, $2::text::jsonb, $3)
             ON CONFLICT (singleton) DO UPDATE SET policy = EXCLUDED.policy, last_pass = EXCLUDED.last_pass,
                 run_by = EXCLUDED.run_by, ran_at = now()",
            &[&policy, &report, &run_by],
        )
        .await?;
    Ok(())
}

/// `name` as an SQL identifier. Partition names come from the catalog, but quoting keeps any name safe.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
