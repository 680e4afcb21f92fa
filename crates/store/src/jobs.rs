//! The analysis work queue: claiming jobs under a lease, keeping the lease alive, and settling failed
//! attempts. Completing a job is in [`crate::results`], because it happens with the verdict's write.
//!
//! A job is `queued` until a listener claims it; claiming makes it `running` under the claim's lease and
//! counts the attempt in the same committed statement, so a listener that dies mid-work has still used the
//! attempt. A lease that expires returns the job to whoever claims next; a job that has used all its
//! attempts goes to `dead` with its last error.
//!
//! Every claim has its own lease holder, the listener's name and a random token (`listener-a#9f…`): only
//! that claim renews, completes or fails its jobs. Fencing by the listener's name alone would let a
//! listener restarted under the same name (a StatefulSet pod, a fixed `instance`) settle jobs its
//! predecessor held and someone else has claimed since.

use std::time::{Duration, SystemTime};

use tokio_postgres::GenericClient;
use tracing::instrument;

use crate::StoreError;

/// A job a listener now holds, with what it needs to score the frame.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedJob {
    pub frame_id: i64,
    /// Attempts including this one.
    pub attempts: i32,
    /// Rounds it failed while no analysis replica answered (see [`fail_jobs`]).
    pub outage_retries: i32,
    pub device_id: String,
    pub sensor_id: String,
    pub stream_epoch: i64,
    pub seq: i64,
    pub captured_at: SystemTime,
    pub received_at: SystemTime,
    /// When the frame's transaction stored it (its job's enqueue time).
    pub stored_at: SystemTime,
    /// The machine the sensor records (`sensor_machines`), if registered.
    pub machine: Option<(String, String)>,
    /// W3C `traceparent` of the span that stored the frame, when its trace is exported.
    pub trace_parent: Option<String>,
}

/// What claiming found: jobs to work on, and jobs given up because their attempts ran out while a
/// lease was held (the listener holding them vanished each time).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Claim {
    /// The lease holder of these jobs: pass it to [`extend_leases`], [`fail_jobs`] and
    /// [`crate::complete_jobs`].
    pub lease: String,
    pub jobs: Vec<ClaimedJob>,
    pub dead: u64,
}

/// The size of the queue, for metrics and for watching a backlog grow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Waiting and claimable now.
    pub ready: i64,
    /// Waiting for a retry's backoff.
    pub delayed: i64,
    pub running: i64,
    pub dead: i64,
}

impl QueueDepth {
    /// Jobs not yet settled (neither done nor dead).
    pub fn open(&self) -> i64 {
        self.ready + self.delayed + self.running
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Arbitrary constant that identifies auscult's claim lock among advisory locks.
const CLAIM_LOCK_KEY: i64 = 0x0061_7573_636c_6169;

/// Claims up to `limit` jobs for listener `owner` with a lease of `lease`: queued jobs past their backoff
/// and running jobs whose lease expired, skipping rows other listeners hold. Jobs whose attempts are used
/// up go to `dead` instead. The claim is committed when this returns; its [`Claim::lease`] settles the
/// jobs.
///
/// A claim takes whole streams: no job of a sensor stream another claim is working (a job `running`
/// under a live lease), and of the streams it takes, their due jobs in sequence order, oldest stream
/// first. A frame is judged with the verdicts of the frames before it, so a frame must never be scored
/// while another claim still holds its predecessors: with this rule a backlog worked by many claims at
/// once is judged exactly as live streams are. Claims are serialised (a transaction-scoped advisory
/// lock, held for milliseconds) so that each sees the streams the one before it took.
#[instrument(skip(client))]
pub async fn claim_jobs(
    client: &mut tokio_postgres::Client,
    owner: &str,
    limit: i64,
    lease: Duration,
    max_attempts: i32,
) -> Result<Claim, StoreError> {
    let holder = format!("{owner}#{:016x}", rand::random::<u64>());
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CLAIM_LOCK_KEY])
        .await?;
    let rows = tx
        .query(
            "WITH held AS (
                SELECT DISTINCT device_id, sensor_id, stream_epoch FROM analysis_jobs
                WHERE state = 'running' AND lease_expires_at >= now()
            ), due AS (
                SELECT j.frame_id, j.device_id, j.sensor_id, j.stream_epoch, j.seq
                FROM analysis_jobs j
                WHERE ((j.state = 'queued' AND j.not_before <= now())
                       OR (j.state = 'running' AND j.lease_expires_at < now()))
                  AND NOT EXISTS (
                      SELECT 1 FROM held h
                      WHERE h.device_id = j.device_id AND h.sensor_id = j.sensor_id
                        AND h.stream_epoch = j.stream_epoch)
                ORDER BY j.frame_id
                LIMIT $2::int8 * 8
            ), chosen AS (
                -- Whole streams, oldest first: several claims then work different streams at once.
                SELECT frame_id FROM due
                ORDER BY min(frame_id) OVER (PARTITION BY device_id, sensor_id, stream_epoch), seq, frame_id
                LIMIT $2::int8
            ), picked AS (
                SELECT j.frame_id FROM analysis_jobs j JOIN chosen USING (frame_id)
                WHERE (j.state = 'queued' AND j.not_before <= now())
                   OR (j.state = 'running' AND j.lease_expires_at < now())
                FOR UPDATE OF j SKIP LOCKED
            )
            UPDATE analysis_jobs j SET
                state = CASE WHEN j.attempts >= $4 THEN 'dead' ELSE 'running' END,
                attempts = CASE WHEN j.attempts >= $4 THEN j.attempts ELSE j.attempts + 1 END,
                last_error = CASE WHEN j.attempts >= $4
                    THEN coalesce(j.last_error, 'lease expired') || format(' (gave up after %s attempts)', j.attempts)
                    ELSE j.last_error END,
                lease_owner = CASE WHEN j.attempts >= $4 THEN NULL ELSE $1 END,
                lease_expires_at = now() + make_interval(secs => $3::float8 / 1000.0),
                updated_at = now()
            FROM picked
            WHERE j.frame_id = picked.frame_id
            RETURNING j.frame_id, j.state, j.attempts, j.enqueued_at, j.trace_parent, j.outage_retries",
            &[&holder, &limit, &millis(lease), &max_attempts],
        )
        .await?;
    let mut claimed: Vec<(i64, i32, SystemTime, Option<String>, i32)> =
        Vec::with_capacity(rows.len());
    let mut dead = 0;
    for row in &rows {
        let state: &str = row.try_get(1)?;
        if state == "dead" {
            dead += 1;
        } else {
            claimed.push((
                row.try_get(0)?,
                row.try_get(2)?,
                row.try_get(3)?,
                row.try_get(4)?,
                row.try_get(5)?,
            ));
        }
    }
    let ids: Vec<i64> = claimed.iter().map(|c| c.0).collect();
    let frames = tx
        .query(
            "SELECT f.id, f.device_id, f.sensor_id, f.stream_epoch, f.seq, f.captured_at, f.received_at,
                    m.machine_type, m.machine_id
             FROM frames f LEFT JOIN sensor_machines m USING (device_id, sensor_id)
             WHERE f.id = ANY($1)",
            &[&ids],
        )
        .await?;
    let mut jobs = Vec::with_capacity(frames.len());
    for row in &frames {
        let frame_id: i64 = row.try_get(0)?;
        let Some((_, attempts, stored_at, trace_parent, outage_retries)) =
            claimed.iter().find(|c| c.0 == frame_id)
        else {
            continue;
        };
        let machine_type: Option<String> = row.try_get(7)?;
        let machine_id: Option<String> = row.try_get(8)?;
        jobs.push(ClaimedJob {
            frame_id,
            attempts: *attempts,
            outage_retries: *outage_retries,
            device_id: row.try_get(1)?,
            sensor_id: row.try_get(2)?,
            stream_epoch: row.try_get(3)?,
            seq: row.try_get(4)?,
            captured_at: row.try_get(5)?,
            received_at: row.try_get(6)?,
            stored_at: *stored_at,
            machine: machine_type.zip(machine_id),
            trace_parent: trace_parent.clone(),
        });
    }
    jobs.sort_by_key(|j| j.frame_id);
    crate::health::record_activity(&tx, &jobs).await?;
    tx.commit().await?;
    Ok(Claim {
        lease: holder,
        jobs,
        dead,
    })
}

/// Extends the lease of jobs the claim `lease` (its [`Claim::lease`]) still holds; returns how many.
pub async fn extend_leases(
    client: &impl GenericClient,
    lease_holder: &str,
    frame_ids: &[i64],
    lease: Duration,
) -> Result<u64, StoreError> {
    Ok(client
        .execute(
            "UPDATE analysis_jobs SET lease_expires_at = now() + make_interval(secs => $3::float8 / 1000.0)
             WHERE frame_id = ANY($2) AND state = 'running' AND lease_owner = $1",
            &[&lease_holder, &frame_ids, &millis(lease)],
        )
        .await?)
}

/// An attempt that did not produce a verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct FailedAttempt {
    pub frame_id: i64,
    pub error: String,
    /// Retrying cannot help (the frame is malformed for analysis): dead at once.
    pub permanent: bool,
    /// No analysis replica answered at all: not the frame's fault, so the attempt is given back (up to
    /// `max_outage_retries` times; see [`fail_jobs`]).
    pub outage: bool,
}

/// How failed attempts are settled.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: i32,
    /// Failures during an analysis outage given back before they count as attempts.
    pub max_outage_retries: i32,
    /// The first retry's delay; it doubles with each attempt (or outage retry), to at most a minute.
    pub backoff: Duration,
}

/// Settles failed attempts of jobs the claim `lease_holder` holds: back to the queue after a backoff that
/// doubles with each attempt (from `backoff`, at most a minute), or `dead` when permanent or out of
/// attempts. A failure during an analysis outage gives its attempt back, while the job has outage retries
/// left. Returns the number of jobs that went dead.
pub async fn fail_jobs(
    client: &impl GenericClient,
    lease_holder: &str,
    failures: &[FailedAttempt],
    policy: RetryPolicy,
) -> Result<u64, StoreError> {
    if failures.is_empty() {
        return Ok(0);
    }
    let ids: Vec<i64> = failures.iter().map(|f| f.frame_id).collect();
    let errors: Vec<&str> = failures.iter().map(|f| f.error.as_str()).collect();
    let permanent: Vec<bool> = failures.iter().map(|f| f.permanent).collect();
    let outage: Vec<bool> = failures.iter().map(|f| f.outage).collect();
    // `forgiven`: an outage retry, the attempt given back. Its backoff doubles with the outage retries.
    let rows = client
        .query(
            "UPDATE analysis_jobs j SET
                state = CASE WHEN f.permanent THEN 'dead'
                             WHEN f.outage AND j.outage_retries < $7 THEN 'queued'
                             WHEN j.attempts >= $6 THEN 'dead'
                             ELSE 'queued' END,
                attempts = CASE WHEN NOT f.permanent AND f.outage AND j.outage_retries < $7
                                THEN greatest(j.attempts - 1, 0) ELSE j.attempts END,
                outage_retries = j.outage_retries + CASE WHEN f.outage THEN 1 ELSE 0 END,
                last_error = f.error,
                not_before = now() + make_interval(secs => least(60.0, $8::float8 / 1000.0 * power(2,
                    CASE WHEN f.outage AND j.outage_retries < $7 THEN least(j.outage_retries, 10)
                         ELSE j.attempts - 1 END))),
                lease_owner = NULL,
                lease_expires_at = NULL,
                updated_at = now()
             FROM unnest($2::int8[], $3::text[], $4::bool[], $5::bool[]) AS f(frame_id, error, permanent, outage)
             WHERE j.frame_id = f.frame_id AND j.state = 'running' AND j.lease_owner = $1
             RETURNING j.state",
            &[
                &lease_holder,
                &ids,
                &errors,
                &permanent,
                &outage,
                &policy.max_attempts,
                &policy.max_outage_retries,
                &millis(policy.backoff),
            ],
        )
        .await?;
    let mut dead = 0;
    for row in &rows {
        if row.try_get::<_, &str>(0)? == "dead" {
            dead += 1;
        }
    }
    Ok(dead)
}

/// Counts the queue by state.
pub async fn queue_depth(client: &impl GenericClient) -> Result<QueueDepth, StoreError> {
    let row = client
        .query_one(
            "SELECT
                count(*) FILTER (WHERE state = 'queued' AND not_before <= now()),
                count(*) FILTER (WHERE state = 'queued' AND not_before > now()),
                count(*) FILTER (WHERE state = 'running'),
                (SELECT count(*) FROM analysis_jobs WHERE state = 'dead')
             FROM analysis_jobs WHERE state IN ('queued', 'running')",
            &[],
        )
        .await?;
    Ok(QueueDepth {
        ready: row.try_get(0)?,
        delayed: row.try_get(1)?,
        running: row.try_get(2)?,
        dead: row.try_get(3)?,
    })
}
