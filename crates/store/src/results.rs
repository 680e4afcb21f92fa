//! Verdicts: the history a frame is judged with, and writing verdicts in the transaction that
//! completes their jobs (and judges the alerts they may raise).

use std::collections::HashMap;

use serde::Serialize;
use tokio_postgres::GenericClient;
use tracing::instrument;

use crate::StoreError;
use crate::alerts::{AlertChange, AlertRule};
use crate::jobs::ClaimedJob;

/// What a stream remembers of one scored frame (see the analysis contract's `WindowSummary`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamSummary {
    /// The frame's sequence number in its stream.
    pub seq: i64,
    pub model_version: String,
    pub windows: i32,
    pub mean_score: f64,
    pub band_means: Vec<f32>,
    pub band_peaks: Vec<f32>,
    /// The frame's waveform: per second, the RMS of its loudest frame at each of the model's impulse
    /// scales (the first is the largest absolute sample); energy; samples (0 samples: not measured).
    pub waveform_peaks: Vec<f32>,
    pub waveform_energy: f64,
    pub waveform_samples: i64,
}

/// A verdict to store for a frame.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewResult {
    pub frame_id: i64,
    pub model_version: String,
    pub anomalous: bool,
    pub anomaly_score: f64,
    pub threshold: f64,
    pub class: String,
    pub class_probability: f32,
    /// Class → probability.
    pub probabilities: serde_json::Map<String, serde_json::Value>,
    pub profile: String,
    pub profile_scope: String,
    /// `[{"low_hz", "high_hz", "measure", "departure_db", "z"}, …]`
    pub top_bands: serde_json::Value,
    pub windows: i32,
    pub history_windows: i32,
    /// Judged over a clip's length; alerts count only these.
    pub clip: bool,
    /// For a clip verdict, which parts of its score flagged it: `{"windows", "band_spectrum",
    /// "band_peaks", "impulsiveness"}` in units of each part's normal range (null where not judged),
    /// `"impulsiveness_side"` (`duller` or `sharper`) and `"furthest"` (the part that set the score).
    /// Null for shorter sound.
    pub parts: serde_json::Value,
    pub summary_windows: i32,
    pub mean_window_score: f64,
    pub band_means: Vec<f32>,
    pub band_peaks: Vec<f32>,
    pub waveform_peaks: Vec<f32>,
    pub waveform_energy: f64,
    pub waveform_samples: i64,
}

/// A verdict as stored, with its latencies.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResult {
    pub frame_id: i64,
    pub device_id: String,
    pub sensor_id: String,
    pub anomalous: bool,
    pub latency_from_capture_ms: f64,
    pub latency_from_storage_ms: f64,
}

/// What completing a batch did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Completion {
    /// Jobs this listener still held and has now completed.
    pub completed: Vec<i64>,
    /// Verdicts newly stored (a verdict already stored for the frame and model version is not).
    pub stored: Vec<StoredResult>,
    pub alerts: Vec<AlertChange>,
}

/// For each job, the summaries of up to `depth` frames before it in its sensor's stream (same
/// epoch, sequence numbers `seq - depth .. seq`), oldest first; the latest verdict per frame.
#[instrument(skip_all, fields(jobs = jobs.len()))]
pub async fn stream_history(
    client: &impl GenericClient,
    jobs: &[&ClaimedJob],
    depth: i64,
) -> Result<HashMap<i64, Vec<StreamSummary>>, StoreError> {
    if jobs.is_empty() || depth <= 0 {
        return Ok(HashMap::new());
    }
    let frame_ids: Vec<i64> = jobs.iter().map(|j| j.frame_id).collect();
    let devices: Vec<&str> = jobs.iter().map(|j| j.device_id.as_str()).collect();
    let sensors: Vec<&str> = jobs.iter().map(|j| j.sensor_id.as_str()).collect();
    let epochs: Vec<i64> = jobs.iter().map(|j| j.stream_epoch).collect();
    let seqs: Vec<i64> = jobs.iter().map(|j| j.seq).collect();
    let rows = client
        .query(
            "SELECT DISTINCT ON (k.frame_id, r.seq)
                    k.frame_id, r.seq, r.model_version, r.summary_windows, r.mean_window_score, r.band_means, r.band_peaks,
                    r.waveform_peaks, r.waveform_energy, r.waveform_samples
             FROM unnest($1::int8[], $2::text[], $3::text[], $4::int8[], $5::int8[])
                  AS k(frame_id, device_id, sensor_id, stream_epoch, seq)
             JOIN analysis_results r
               ON r.device_id = k.device_id AND r.sensor_id = k.sensor_id
              AND r.stream_epoch = k.stream_epoch AND r.seq >= k.seq - $6 AND r.seq < k.seq
             ORDER BY k.frame_id, r.seq, r.scored_at DESC",
            &[&frame_ids, &devices, &sensors, &epochs, &seqs, &depth],
        )
        .await?;
    let mut history: HashMap<i64, Vec<StreamSummary>> = HashMap::new();
    for row in &rows {
        history
            .entry(row.try_get(0)?)
            .or_default()
            .push(StreamSummary {
                seq: row.try_get(1)?,
                model_version: row.try_get(2)?,
                windows: row.try_get(3)?,
                mean_score: row.try_get(4)?,
                band_means: row.try_get(5)?,
                band_peaks: row.try_get(6)?,
                waveform_peaks: row.try_get::<_, Option<Vec<f32>>>(7)?.unwrap_or_default(),
                waveform_energy: row.try_get::<_, Option<f64>>(8)?.unwrap_or(0.0),
                waveform_samples: row.try_get::<_, Option<i64>>(9)?.unwrap_or(0),
            });
    }
    Ok(history)
}

/// In one transaction: completes the jobs the claim `lease_holder` (its [`crate::Claim::lease`]) still
/// holds among `results`, stores their verdicts (once per frame and model version, with a search-outbox
/// row each while indexing is on), and judges the alerts of the sensors they belong to. A job whose lease
/// was lost to another claim is left to that claim.
#[instrument(skip_all, fields(results = results.len()))]
pub async fn complete_jobs(
    client: &mut tokio_postgres::Client,
    lease_holder: &str,
    results: &[NewResult],
    rule: &AlertRule,
    webhooks: &[String],
) -> Result<Completion, StoreError> {
    if results.is_empty() {
        return Ok(Completion::default());
    }
    let ids: Vec<i64> = results.iter().map(|r| r.frame_id).collect();
    let input = serde_json::to_string(results).map_err(|e| StoreError::Encode(e.to_string()))?;
    let tx = client.transaction().await?;
    let rows = tx
        .query(
            "WITH done AS (
                UPDATE analysis_jobs SET state = 'done', lease_owner = NULL, lease_expires_at = NULL,
                       last_error = NULL, updated_at = now()
                WHERE frame_id = ANY($2) AND state = 'running' AND lease_owner = $1
                RETURNING frame_id, enqueued_at
            ), input AS (
                SELECT * FROM jsonb_to_recordset($3::text::jsonb) AS r(
                    frame_id bigint, model_version text, anomalous boolean, anomaly_score float8,
                    threshold float8, class text, class_probability real, probabilities jsonb, profile text,
                    profile_scope text, top_bands jsonb, windows integer, history_windows integer, clip boolean,
                    parts jsonb, summary_windows integer, mean_window_score float8, band_means real[],
                    band_peaks real[], waveform_peaks real[], waveform_energy float8, waveform_samples bigint)
            ), inserted AS (
                INSERT INTO analysis_results (
                    frame_id, model_version, device_id, sensor_id, stream_epoch, seq, captured_at, stored_at,
                    anomalous, anomaly_score, threshold, class, class_probability, probabilities, profile,
                    profile_scope, top_bands, windows, history_windows, clip, parts, summary_windows,
                    mean_window_score, band_means, band_peaks, waveform_peaks, waveform_energy, waveform_samples,
                    latency_from_capture_ms, latency_from_storage_ms)
                SELECT i.frame_id, i.model_version, f.device_id, f.sensor_id, f.stream_epoch, f.seq,
                       f.captured_at, d.enqueued_at, i.anomalous, i.anomaly_score, i.threshold, i.class,
                       i.class_probability, i.probabilities, i.profile, i.profile_scope, i.top_bands, i.windows,
                       i.history_windows, i.clip, NULLIF(i.parts, 'null'::jsonb), i.summary_windows,
                       i.mean_window_score, i.band_means, i.band_peaks,
                       i.waveform_peaks, i.waveform_energy, i.waveform_samples,
                       extract(epoch FROM clock_timestamp() - f.captured_at) * 1000,
                       extract(epoch FROM clock_timestamp() - d.enqueued_at) * 1000
                FROM input i JOIN done d USING (frame_id) JOIN frames f ON f.id = i.frame_id
                ON CONFLICT (frame_id, model_version, captured_at) DO NOTHING
                RETURNING id, frame_id, device_id, sensor_id, anomalous,
                          latency_from_capture_ms, latency_from_storage_ms
            ), outbox AS (
                INSERT INTO search_outbox (kind, ref_id) SELECT 'result', id FROM inserted
                WHERE (SELECT indexing FROM search_projection)
            )
            SELECT d.frame_id, i.device_id, i.sensor_id, i.anomalous,
                   i.latency_from_capture_ms, i.latency_from_storage_ms
            FROM done d LEFT JOIN inserted i USING (frame_id)",
            &[&lease_holder, &ids, &input],
        )
        .await?;
    let mut completion = Completion::default();
    for row in &rows {
        let frame_id: i64 = row.try_get(0)?;
        completion.completed.push(frame_id);
        if let Some(device_id) = row.try_get::<_, Option<String>>(1)? {
            completion.stored.push(StoredResult {
                frame_id,
                device_id,
                sensor_id: row.try_get(2)?,
                anomalous: row.try_get(3)?,
                latency_from_capture_ms: row.try_get(4)?,
                latency_from_storage_ms: row.try_get(5)?,
            });
        }
    }
    let mut sensors: Vec<(&str, &str)> = completion
        .stored
        .iter()
        .map(|r| (r.device_id.as_str(), r.sensor_id.as_str()))
        .collect();
    sensors.sort_unstable();
    sensors.dedup();
    completion.alerts = crate::alerts::judge_alerts(&tx, &sensors, rule, webhooks).await?;
    tx.commit().await?;
    Ok(completion)
}
