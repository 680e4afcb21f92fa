//! Maintenance of PostgreSQL's data lifecycle: partitions ahead of the frames, expired partitions dropped,
//! queues pruned. Every replica runs the loop; an advisory lock lets one pass run at a time, so replicas
//! share the work and any survivor carries on alone.

use std::time::{Duration, SystemTime};

use auscult_store::{PassOutcome, PassReport, SessionLimits};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::{metrics, settings::LifecycleSettings};

/// A pass may wait for long transactions (a detach waits for every snapshot that could see the partition)
/// and copy a day of kept audio; past this it is stopped and the next pass resumes.
const PASS_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Runs a pass now and then every `settings.interval` until `shutdown`.
pub(crate) async fn maintain(
    settings: LifecycleSettings,
    database_url: String,
    instance: String,
    shutdown: CancellationToken,
) {
    loop {
        let span = info_span!("lifecycle_pass", instance = %instance);
        let outcome = tokio::select! {
            () = shutdown.cancelled() => return,
            outcome = run_once(&settings, &database_url, &instance).instrument(span) => outcome,
        };
        match outcome {
            Ok(PassOutcome::Ran(report)) => record(&report),
            Ok(PassOutcome::Busy) => {
                ::metrics::counter!(metrics::LIFECYCLE_PASSES_TOTAL, "outcome" => "busy")
                    .increment(1);
            }
            Err(e) => {
                ::metrics::counter!(metrics::LIFECYCLE_PASSES_TOTAL, "outcome" => "failed")
                    .increment(1);
                warn!("lifecycle pass failed (the next one retries): {e:#}");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(settings.interval) => {}
        }
    }
}

/// Sets the size gauges from `auscult retention status`'s view of the database.
async fn report_sizes(client: &tokio_postgres::Client) -> Result<(), auscult_store::StoreError> {
    let status = auscult_store::lifecycle_status(client, SystemTime::now()).await?;
    for kind in &status.partitioned {
        ::metrics::gauge!(metrics::STORED_BYTES, "table" => kind.table).set(kind.bytes as f64);
        ::metrics::gauge!(metrics::PARTITIONS, "table" => kind.table)
            .set(kind.partitions.len() as f64);
    }
    ::metrics::gauge!(metrics::STORED_BYTES, "table" => "frames_kept")
        .set(status.kept_audio.bytes as f64);
    for queue in &status.queues {
        ::metrics::gauge!(metrics::STORED_BYTES, "table" => queue.table).set(queue.bytes as f64);
    }
    if let Some((_, _, at)) = status.next_drop() {
        ::metrics::gauge!(metrics::NEXT_DROP_SECONDS).set(unix_seconds(at));
    }
    Ok(())
}

fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// One pass on a connection of its own, then the size gauges from the same connection: every replica
/// reports them, whichever ran the pass.
async fn run_once(
    settings: &LifecycleSettings,
    database_url: &str,
    instance: &str,
) -> Result<PassOutcome, auscult_store::StoreError> {
    let limits = SessionLimits {
        statement_timeout: PASS_STATEMENT_TIMEOUT,
        ..SessionLimits::default()
    };
    let config = auscult_store::session_config(database_url, "auscult-ingest-lifecycle", &limits)?;
    let (mut client, connection) = config.connect().await?;
    let driver = tokio::spawn(connection);
    let outcome = auscult_store::run_pass(
        &mut client,
        &settings.retention,
        SystemTime::now(),
        instance,
    )
    .await;
    if outcome.is_ok()
        && let Err(e) = report_sizes(&client).await
    {
        warn!("reading storage sizes: {e:#}");
    }
    drop(client);
    let _ = driver.await;
    outcome
}

fn record(report: &PassReport) {
    ::metrics::counter!(metrics::LIFECYCLE_PASSES_TOTAL, "outcome" => "ran").increment(1);
    for dropped in &report.partitions_dropped {
        ::metrics::counter!(metrics::PARTITIONS_DROPPED_TOTAL, "table" => dropped.table)
            .increment(1);
        ::metrics::counter!(metrics::BYTES_FREED_TOTAL, "table" => dropped.table)
            .increment(dropped.bytes.unsigned_abs());
    }
    ::metrics::counter!(metrics::PARTITIONS_CREATED_TOTAL)
        .increment(report.partitions_created.len() as u64);
    ::metrics::counter!(metrics::FRAMES_KEPT_TOTAL).increment(report.frames_kept);
    for (kind, rows) in [
        ("done_jobs", report.done_jobs_pruned),
        ("orphans", report.orphans_pruned),
        ("kept_frames", report.kept_frames_pruned),
        ("alerts", report.alerts_pruned),
    ] {
        ::metrics::counter!(metrics::ROWS_PRUNED_TOTAL, "kind" => kind).increment(rows);
    }
    ::metrics::gauge!(metrics::LIFECYCLE_LAST_PASS_SECONDS).set(unix_seconds(SystemTime::now()));
    let changed = !report.partitions_created.is_empty()
        || !report.partitions_dropped.is_empty()
        || report.done_jobs_pruned
            + report.orphans_pruned
            + report.kept_frames_pruned
            + report.alerts_pruned
            > 0;
    if changed {
        info!(
            created = report.partitions_created.len(),
            dropped = report.partitions_dropped.len(),
            bytes_freed = report.bytes_freed(),
            frames_kept = report.frames_kept,
            done_jobs = report.done_jobs_pruned,
            kept_frames_pruned = report.kept_frames_pruned,
            took_ms = report.took_ms,
            "lifecycle pass"
        );
    }
}
