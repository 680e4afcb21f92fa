//! What the Elasticsearch projection reads and writes in PostgreSQL: the search outbox (claimed under
//! `FOR UPDATE SKIP LOCKED` by any number of indexers), the documents its rows stand for, the dead
//! letters of documents Elasticsearch refused, and the projection's identity.
//!
//! An indexer claims outbox rows in a transaction, sends their documents, and settles each row in the
//! same transaction: gone when indexed, pushed back when Elasticsearch asked to retry, moved to the dead
//! letters when refused. If the indexer dies before committing, the rows are simply claimed again; the
//! documents' deterministic ids make the second send a no-op.

use std::time::{Duration, SystemTime};

use tokio_postgres::GenericClient;
use tracing::instrument;

use crate::StoreError;

/// What an outbox row points at; its `kind` column holds [`SearchKind::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SearchKind {
    Frame,
    Result,
    Alert,
    Health,
}

impl SearchKind {
    pub const ALL: [SearchKind; 4] = [Self::Frame, Self::Result, Self::Alert, Self::Health];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Frame => "frame",
            Self::Result => "result",
            Self::Alert => "alert",
            Self::Health => "health",
        }
    }

    /// The table holding the rows of this kind.
    pub fn source_table(self) -> &'static str {
        match self {
            Self::Frame => "frames",
            Self::Result => "analysis_results",
            Self::Alert => "alerts",
            Self::Health => "health_events",
        }
    }

    /// The column whose month names a document's index, and against which retention counts.
    pub fn event_time_column(self) -> &'static str {
        match self {
            Self::Frame | Self::Result => "captured_at",
            Self::Alert => "opened_at",
            Self::Health => "at",
        }
    }

    pub fn parse(kind: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == kind)
    }
}

/// A claimed outbox row.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    pub id: i64,
    pub kind: SearchKind,
    pub ref_id: i64,
    /// Sends already tried and pushed back.
    pub attempts: i32,
    /// When the row was written, i.e. when what it describes was committed.
    pub queued_at: SystemTime,
}

/// The document an outbox row stands for, as PostgreSQL holds it now.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceDocument {
    pub outbox_id: i64,
    /// Deterministic: the same row always gives the same id, so a resend is recognised.
    pub document_id: String,
    /// `YYYY.MM` of the document's event time (UTC): which monthly index it belongs to.
    pub month: String,
    /// For documents that change (alerts), a version that only grows; `None` for immutable ones.
    pub version: Option<i64>,
    /// The document's JSON.
    pub body: serde_json::Map<String, serde_json::Value>,
}

/// How a claimed row ends its attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Settlement {
    /// Indexed (or found already indexed), or nothing left to index: the row goes.
    Done,
    /// Elasticsearch asked to come back later (429, 5xx): the row waits `after` and is sent again.
    Retry { error: String, after: Duration },
    /// Refused for good: the row moves to the dead letters with the reason.
    Dead(Refusal),
}

/// Why Elasticsearch refused a document.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub index_name: String,
    pub document_id: String,
    pub status: i32,
    pub error_type: String,
    pub reason: String,
}

/// The outbox at a glance, for metrics and `auscult elastic status`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OutboxDepth {
    /// Rows not yet indexed (including those waiting for a retry).
    pub pending: i64,
    /// Of those, rows waiting for a retry's backoff.
    pub delayed: i64,
    /// Age of the oldest pending row: how far the projection lags behind PostgreSQL.
    pub lag: Duration,
    pub dead_letters: i64,
}

/// A dead letter, for operators.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub id: i64,
    pub kind: String,
    pub ref_id: i64,
    pub refusal: Refusal,
    pub attempts: i32,
    pub failed_at: SystemTime,
}

/// Outbox rows claimed by one indexer round: only this claim's token settles or releases them.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxClaim {
    pub token: i64,
    pub entries: Vec<OutboxEntry>,
}

/// Claims up to `limit` outbox rows that are due, oldest first, skipping rows other indexers are claiming,
/// for `lease`: the claim is committed at once, so no lock is held while the documents travel. Settle the
/// rows with [`settle_outbox`] (or give them back with [`release_outbox`]) before the lease ends; after it,
/// they are due again for any indexer.
#[instrument(skip(client))]
pub async fn claim_outbox(
    client: &impl GenericClient,
    limit: i64,
    lease: Duration,
) -> Result<OutboxClaim, StoreError> {
    let token = rand::random::<i64>();
    let rows = client
        .query(
            "UPDATE search_outbox o
             SET claim = $2, not_before = now() + make_interval(secs => $3)
             FROM (SELECT id FROM search_outbox WHERE not_before <= now()
                   ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) due
             WHERE o.id = due.id
             RETURNING o.id, o.kind, o.ref_id, o.attempts, o.created_at",
            &[&limit, &token, &lease.as_secs_f64()],
        )
        .await?;
    let mut entries = Vec::with_capacity(rows.len());
    for row in &rows {
        let kind: &str = row.try_get(1)?;
        let Some(kind) = SearchKind::parse(kind) else {
            return Err(StoreError::Encode(format!(
                "search_outbox row {} has unknown kind {kind:?}",
                row.try_get::<_, i64>(0)?
            )));
        };
        entries.push(OutboxEntry {
            id: row.try_get(0)?,
            kind,
            ref_id: row.try_get(2)?,
            attempts: row.try_get(3)?,
            queued_at: row.try_get(4)?,
        });
    }
    // UPDATE … RETURNING does not keep the subquery's order.
    entries.sort_by_key(|e| e.id);
    Ok(OutboxClaim { token, entries })
}

/// Gives claimed rows back, due at once (rows left out of a full request, or a round that could not reach
/// the cluster: they are not failures of their own, so their attempts do not count).
pub async fn release_outbox(
    client: &impl GenericClient,
    token: i64,
    ids: &[i64],
) -> Result<u64, StoreError> {
    Ok(client
        .execute(
            "UPDATE search_outbox SET claim = NULL, not_before = now()
             WHERE id = ANY($1) AND claim = $2",
            &[&ids, &token],
        )
        .await?)
}

/// The documents `entries` stand for, read as of now. Entries whose source row no longer exists (a
/// deleted device's frames) have no document; settle them as [`Settlement::Done`].
#[instrument(skip_all, fields(entries = entries.len()))]
pub async fn load_documents(
    client: &impl GenericClient,
    entries: &[OutboxEntry],
) -> Result<Vec<SourceDocument>, StoreError> {
    let mut documents = Vec::with_capacity(entries.len());
    for kind in SearchKind::ALL {
        let (outbox_ids, ref_ids): (Vec<i64>, Vec<i64>) = entries
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| (e.id, e.ref_id))
            .unzip();
        if outbox_ids.is_empty() {
            continue;
        }
        let rows = client
            .query(document_query(kind), &[&outbox_ids, &ref_ids])
            .await?;
        for row in &rows {
            let body: String = row.try_get(4)?;
            let body = match serde_json::from_str(&body) {
                Ok(serde_json::Value::Object(map)) => map,
                _ => {
                    return Err(StoreError::Encode(format!(
                        "{} document is not a JSON object",
                        kind.as_str()
                    )));
                }
            };
            documents.push(SourceDocument {
                outbox_id: row.try_get(0)?,
                document_id: row.try_get(1)?,
                month: row.try_get(2)?,
                version: row.try_get(3)?,
                body,
            });
        }
    }
    Ok(documents)
}

/// One query per kind: `(outbox_id, document_id, month, version, body)` for the rows that still exist.
/// Field names here are the index templates' (`deploy/elasticsearch/`); a test keeps them in step.
fn document_query(kind: SearchKind) -> &'static str {
    match kind {
        SearchKind::Frame => {
            "SELECT o.outbox_id, f.id::text, to_char(f.captured_at AT TIME ZONE 'UTC', 'YYYY.MM'), NULL::int8,
                    jsonb_build_object(
                        'frame_id', f.id,
                        'device_id', f.device_id,
                        'sensor_id', f.sensor_id,
                        'sensor', f.device_id || '/' || f.sensor_id,
                        'machine', m.machine_type || '/' || m.machine_id,
                        'stream_epoch', f.stream_epoch,
                        'seq', f.seq,
                        'captured_at', f.captured_at,
                        'received_at', f.received_at,
                        'transit_ms', round((extract(epoch FROM f.received_at - f.captured_at) * 1000)::numeric, 3),
                        'sample_rate_hz', f.sample_rate_hz,
                        'channels', f.channels,
                        'encoding', f.encoding,
                        'duration_s', round((auscult_sample_frames(f.encoding, f.samples, f.channels)::float8
                            / f.sample_rate_hz)::numeric, 6),
                        'rms_dbfs', f.rms_dbfs,
                        'peak_dbfs', f.peak_dbfs,
                        'crest_factor', f.crest_factor
                    )::text
             FROM unnest($1::int8[], $2::int8[]) AS o(outbox_id, ref_id)
             JOIN frames f ON f.id = o.ref_id
             LEFT JOIN sensor_machines m USING (device_id, sensor_id)"
        }
        SearchKind::Result => {
            "SELECT o.outbox_id, r.frame_id || ':' || r.model_version,
                    to_char(r.captured_at AT TIME ZONE 'UTC', 'YYYY.MM'), NULL::int8,
                    jsonb_build_object(
                        'frame_id', r.frame_id,
                        'device_id', r.device_id,
                        'sensor_id', r.sensor_id,
                        'sensor', r.device_id || '/' || r.sensor_id,
                        'machine', r.profile,
                        'profile_scope', r.profile_scope,
                        'model_version', r.model_version,
                        'stream_epoch', r.stream_epoch,
                        'seq', r.seq,
                        'captured_at', r.captured_at,
                        'stored_at', r.stored_at,
                        'scored_at', r.scored_at,
                        'anomalous', r.anomalous,
                        'anomaly_score', r.anomaly_score,
                        'threshold', r.threshold,
                        'score_over_threshold', CASE WHEN r.threshold > 0 THEN r.anomaly_score / r.threshold END,
                        'class', r.class,
                        'class_probability', r.class_probability,
                        'clip', r.clip,
                        'windows', r.windows,
                        'history_windows', r.history_windows,
                        'top_band', CASE WHEN jsonb_array_length(r.top_bands) > 0 THEN
                            format('%s-%s Hz', round((r.top_bands->0->>'low_hz')::numeric),
                                               round((r.top_bands->0->>'high_hz')::numeric)) END,
                        'top_band_departure_db', (r.top_bands->0->>'departure_db')::float8,
                        'top_bands', r.top_bands,
                        'parts', r.parts,
                        'latency_from_capture_ms', r.latency_from_capture_ms,
                        'latency_from_storage_ms', r.latency_from_storage_ms
                    )::text
             FROM unnest($1::int8[], $2::int8[]) AS o(outbox_id, ref_id)
             JOIN analysis_results r ON r.id = o.ref_id"
        }
        // Alerts change while they fire and when they resolve: the document is rewritten with the alert's
        // revision as its version, which only grows, so a late resend of an older state cannot overwrite
        // a newer one.
        SearchKind::Alert => {
            "SELECT o.outbox_id, a.id::text, to_char(a.opened_at AT TIME ZONE 'UTC', 'YYYY.MM'),
                    a.revision,
                    jsonb_build_object(
                        'alert_id', a.id,
                        'device_id', a.device_id,
                        'sensor_id', a.sensor_id,
                        'sensor', a.device_id || '/' || a.sensor_id,
                        'machine', a.machine,
                        'state', a.state,
                        'opened_at', a.opened_at,
                        'resolved_at', a.resolved_at,
                        'duration_s', extract(epoch FROM a.resolved_at - a.opened_at)::float8,
                        'first_frame_id', a.first_frame_id,
                        'last_frame_id', a.last_frame_id,
                        'anomalous_windows', a.anomalous_windows,
                        'window_count', a.window_count,
                        'peak_score', a.peak_score,
                        'threshold', a.threshold,
                        'model_version', a.model_version,
                        'top_band', CASE WHEN jsonb_array_length(a.top_bands) > 0 THEN
                            format('%s-%s Hz', round((a.top_bands->0->>'low_hz')::numeric),
                                               round((a.top_bands->0->>'high_hz')::numeric)) END,
                        'top_bands', a.top_bands
                    )::text
             FROM unnest($1::int8[], $2::int8[]) AS o(outbox_id, ref_id)
             JOIN alerts a ON a.id = o.ref_id"
        }
        SearchKind::Health => {
            "SELECT o.outbox_id, h.id::text, to_char(h.at AT TIME ZONE 'UTC', 'YYYY.MM'), NULL::int8,
                    jsonb_build_object(
                        'event_id', h.id,
                        'device_id', h.device_id,
                        'sensor_id', h.sensor_id,
                        'sensor', h.device_id || '/' || h.sensor_id,
                        'machine', m.machine_type || '/' || m.machine_id,
                        'kind', h.kind,
                        'detail', h.detail,
                        'at', h.at
                    )::text
             FROM unnest($1::int8[], $2::int8[]) AS o(outbox_id, ref_id)
             JOIN health_events h ON h.id = o.ref_id
             LEFT JOIN sensor_machines m USING (device_id, sensor_id)"
        }
    }
}

/// Settles rows of the claim `token`, in one transaction: done rows leave the outbox, retried rows wait,
/// refused rows move to the dead letters. Rows no longer held by the claim (its lease ran out and another
/// indexer took them) are left alone: that indexer settles them.
#[instrument(skip_all, fields(rows = settlements.len()))]
pub async fn settle_outbox(
    client: &mut tokio_postgres::Client,
    token: i64,
    settlements: &[(i64, Settlement)],
) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    let mut done = Vec::new();
    let (mut retry_ids, mut retry_errors, mut retry_after_ms) =
        (Vec::new(), Vec::new(), Vec::new());
    let mut dead_ids = Vec::new();
    let (mut indices, mut documents, mut statuses, mut types, mut reasons) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (id, settlement) in settlements {
        match settlement {
            Settlement::Done => done.push(*id),
            Settlement::Retry { error, after } => {
                retry_ids.push(*id);
                retry_errors.push(error.as_str());
                retry_after_ms.push(after.as_secs_f64() * 1000.0);
            }
            Settlement::Dead(refusal) => {
                dead_ids.push(*id);
                indices.push(refusal.index_name.as_str());
                documents.push(refusal.document_id.as_str());
                statuses.push(refusal.status);
                types.push(refusal.error_type.as_str());
                reasons.push(refusal.reason.as_str());
            }
        }
    }
    if !done.is_empty() {
        tx.execute(
            "DELETE FROM search_outbox WHERE id = ANY($1) AND claim = $2",
            &[&done, &token],
        )
        .await?;
    }
    if !retry_ids.is_empty() {
        tx.execute(
            "UPDATE search_outbox o SET attempts = o.attempts + 1, last_error = r.error, claim = NULL,
                    not_before = now() + make_interval(secs => r.after_ms / 1000.0)
             FROM unnest($1::int8[], $2::text[], $3::float8[]) AS r(id, error, after_ms)
             WHERE o.id = r.id AND o.claim = $4",
            &[&retry_ids, &retry_errors, &retry_after_ms, &token],
        )
        .await?;
    }
    if !dead_ids.is_empty() {
        tx.execute(
            "WITH refused AS (
                DELETE FROM search_outbox o
                USING unnest($1::int8[], $2::text[], $3::text[], $4::int4[], $5::text[], $6::text[])
                      AS d(id, index_name, document_id, status, error_type, reason)
                WHERE o.id = d.id AND o.claim = $7
                RETURNING o.kind, o.ref_id, o.attempts, o.created_at, d.index_name, d.document_id,
                          d.status, d.error_type, d.reason
            )
            INSERT INTO search_dead_letters (kind, ref_id, index_name, document_id, status, error_type,
                                             reason, attempts, queued_at)
            SELECT kind, ref_id, index_name, document_id, status, error_type, reason, attempts + 1, created_at
            FROM refused",
            &[&dead_ids, &indices, &documents, &statuses, &types, &reasons, &token],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The outbox's size, the age of its oldest row, and the number of dead letters.
pub async fn outbox_depth(client: &impl GenericClient) -> Result<OutboxDepth, StoreError> {
    let row = client
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE not_before > now() AND claim IS NULL),
                    coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8,
                    (SELECT count(*) FROM search_dead_letters)
             FROM search_outbox",
            &[],
        )
        .await?;
    let lag_s: f64 = row.try_get(2)?;
    Ok(OutboxDepth {
        pending: row.try_get(0)?,
        delayed: row.try_get(1)?,
        lag: Duration::from_secs_f64(lag_s.max(0.0)),
        dead_letters: row.try_get(3)?,
    })
}

/// Switches indexing on: from now on every writer queues its documents in the outbox. Returns whether it
/// was off (then nothing written meanwhile was queued, and the caller refills).
pub async fn enable_indexing(client: &impl GenericClient) -> Result<bool, StoreError> {
    Ok(client
        .execute(
            "UPDATE search_projection SET indexing = true WHERE NOT indexing",
            &[],
        )
        .await?
        == 1)
}

/// Switches indexing off and empties the outbox, in one transaction; returns the rows dropped. For a plant
/// that stops using Elasticsearch: without an indexer, the outbox would only grow.
pub async fn disable_indexing(client: &mut tokio_postgres::Client) -> Result<u64, StoreError> {
    let tx = client.transaction().await?;
    // A writer whose statement read the flag before this commits may still queue its rows after the
    // delete: a handful, which the next `disable` (or an indexer, once switched on again) takes away.
    tx.execute("UPDATE search_projection SET indexing = false", &[])
        .await?;
    let dropped = tx.execute("DELETE FROM search_outbox", &[]).await?;
    tx.commit().await?;
    Ok(dropped)
}

/// Whether writers queue documents for Elasticsearch.
pub async fn indexing_enabled(client: &impl GenericClient) -> Result<bool, StoreError> {
    Ok(client
        .query_one("SELECT indexing FROM search_projection", &[])
        .await?
        .try_get(0)?)
}

/// The identity this database writes into the cluster as its marker.
pub async fn projection_id(client: &impl GenericClient) -> Result<String, StoreError> {
    Ok(client
        .query_one("SELECT projection_id FROM search_projection", &[])
        .await?
        .try_get(0)?)
}

/// How far back a refill reaches, per kind: older rows are past the indices' retention.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RefillWindow {
    pub kind: SearchKind,
    pub retention: Duration,
}

/// Queues every row within its retention again, for a cluster that lost the projection (or never had
/// it). Returns `None` without queueing if another indexer refilled after `noticed_at` (it found the
/// same loss). Rows still queued are not queued again.
#[instrument(skip(client))]
pub async fn refill_outbox(
    client: &mut tokio_postgres::Client,
    windows: &[RefillWindow],
    noticed_at: SystemTime,
) -> Result<Option<u64>, StoreError> {
    let tx = client.transaction().await?;
    let refilled_at: Option<SystemTime> = tx
        .query_one("SELECT refilled_at FROM search_projection FOR UPDATE", &[])
        .await?
        .try_get(0)?;
    if refilled_at.is_some_and(|at| at >= noticed_at) {
        return Ok(None);
    }
    let mut queued = 0;
    for window in windows {
        let retention_s = window.retention.as_secs_f64();
        let (kind, table, time) = (
            window.kind.as_str(),
            window.kind.source_table(),
            window.kind.event_time_column(),
        );
        let sql = format!(
            "INSERT INTO search_outbox (kind, ref_id) SELECT '{kind}', s.id FROM {table} s
             WHERE s.{time} >= now() - make_interval(secs => $1)
               AND NOT EXISTS (SELECT 1 FROM search_outbox o WHERE o.kind = '{kind}' AND o.ref_id = s.id)
             ORDER BY s.id"
        );
        queued += tx.execute(&sql, &[&retention_s]).await?;
    }
    tx.execute(
        "UPDATE search_projection SET refilled_at = clock_timestamp()",
        &[],
    )
    .await?;
    tx.commit().await?;
    Ok(Some(queued))
}

/// The newest dead letters first, at most `limit`.
pub async fn list_dead_letters(
    client: &impl GenericClient,
    limit: i64,
) -> Result<Vec<DeadLetter>, StoreError> {
    let rows = client
        .query(
            "SELECT id, kind, ref_id, index_name, document_id, status, error_type, reason, attempts, failed_at
             FROM search_dead_letters ORDER BY id DESC LIMIT $1",
            &[&limit],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(DeadLetter {
                id: r.try_get(0)?,
                kind: r.try_get(1)?,
                ref_id: r.try_get(2)?,
                refusal: Refusal {
                    index_name: r.try_get(3)?,
                    document_id: r.try_get(4)?,
                    status: r.try_get(5)?,
                    error_type: r.try_get(6)?,
                    reason: r.try_get(7)?,
                },
                attempts: r.try_get(8)?,
                failed_at: r.try_get(9)?,
            })
        })
        .collect()
}

/// Moves every dead letter back into the outbox (once its cause is fixed) and returns how many.
pub async fn replay_dead_letters(client: &mut tokio_postgres::Client) -> Result<u64, StoreError> {
    let tx = client.transaction().await?;
    let moved = tx
        .execute(
            "WITH replayed AS (DELETE FROM search_dead_letters RETURNING kind, ref_id, id)
             INSERT INTO search_outbox (kind, ref_id) SELECT kind, ref_id FROM replayed ORDER BY id",
            &[],
        )
        .await?;
    tx.commit().await?;
    Ok(moved)
}
