//! A job worker: claim a batch, keep its lease alive, score it on the analysis replicas, store the
//! verdicts in the transaction that completes the jobs, settle the failures.
//!
//! Frames of one sensor in a batch are scored in order, round by round, so that each is judged with
//! the verdicts of the frames just before it (its stream history); frames of different sensors in
//! the same round go in one request. A request that fails as a whole is split until the frame that
//! made it fail is alone ([`score_round`]): one frame analysis cannot take never costs the frames
//! beside it an attempt.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use auscult_proto::analysis::score_parts;
use auscult_proto::analysis::v1 as pb;
use auscult_store::{ClaimedJob, FailedAttempt, NewResult, StreamSummary};
use auscult_telemetry::TraceParent;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::replicas::{AnalysisReplicas, CallError};
use crate::settings::Settings;

/// What a worker needs, shared by all of a listener's workers.
#[derive(Debug, Clone)]
pub struct WorkerContext {
    pub settings: Arc<Settings>,
    pub owner: Arc<str>,
    pub store: auscult_store::Pool,
    pub replicas: AnalysisReplicas,
}

/// Claims and works batches until `shutdown`; sleeps on `wakeups` (or the sweep timer) when the
/// queue is empty. A batch in progress is finished before stopping.
pub async fn run(
    context: WorkerContext,
    mut wakeups: watch::Receiver<u64>,
    shutdown: CancellationToken,
) {
    let sweep = context.settings.jobs.sweep_interval;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        wakeups.mark_unchanged();
        let worked = match claim(&context).await {
            Ok((_, jobs)) if jobs.is_empty() => false,
            Ok((lease, jobs)) => {
                let span = info_span!("batch", jobs = jobs.len(), lease = %lease);
                work_batch(&context, lease, jobs).instrument(span).await;
                true
            }
            Err(e) => {
                warn!("claiming jobs: {e}");
                false
            }
        };
        if worked {
            continue;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = wakeups.changed() => {}
            () = tokio::time::sleep(sweep) => {}
        }
    }
}

/// Claims a batch: its lease holder (which alone settles the jobs) and the jobs.
async fn claim(context: &WorkerContext) -> Result<(Arc<str>, Vec<ClaimedJob>), String> {
    let mut client = context.store.get().await.map_err(|e| e.to_string())?;
    let jobs = &context.settings.jobs;
    let claim = auscult_store::claim_jobs(
        &mut client,
        &context.owner,
        jobs.batch,
        jobs.lease,
        jobs.max_attempts,
    )
    .await
    .map_err(|e| e.to_string())?;
    if claim.dead > 0 {
        metrics::counter!("auscult_listener_jobs_total", "outcome" => "dead").increment(claim.dead);
        warn!(
            jobs = claim.dead,
            "jobs gave up: their attempts ran out while leased"
        );
    }
    metrics::counter!("auscult_listener_jobs_claimed_total").increment(claim.jobs.len() as u64);
    Ok((Arc::from(claim.lease), claim.jobs))
}

/// Works one claimed batch to the end: every job is completed, failed or (on database trouble) left
/// to its lease.
async fn work_batch(context: &WorkerContext, lease: Arc<str>, jobs: Vec<ClaimedJob>) {
    let heartbeat = tokio::spawn(keep_leases(
        context.clone(),
        Arc::clone(&lease),
        jobs.iter().map(|j| j.frame_id).collect(),
    ));
    let history = match load_history(context, &jobs).await {
        Ok(history) => history,
        Err(e) => {
            warn!("reading stream history: {e}; scoring without it");
            HashMap::new()
        }
    };
    let mut remembered: HashMap<(String, String, i64, i64), StreamSummary> = HashMap::new();
    for job in &jobs {
        for summary in history.get(&job.frame_id).into_iter().flatten() {
            remembered.insert(
                (
                    job.device_id.clone(),
                    job.sensor_id.clone(),
                    job.stream_epoch,
                    summary.seq,
                ),
                summary.clone(),
            );
        }
    }
    let mut traced = job_spans(&jobs, &lease);
    for round in rounds(&jobs) {
        let items: Vec<pb::ScoreItem> = round
            .iter()
            .map(|job| {
                let mut item = score_item(job, &remembered, context.settings.jobs.history_frames);
                if let Some(parent) = traced.get(&job.frame_id).and_then(TraceParent::of) {
                    item.traceparent = parent.to_string();
                }
                item
            })
            .collect();
        let (results, failures) = score_round(context, &round, items).await;
        for result in &results {
            if let Some(job) = round.iter().find(|j| j.frame_id == result.frame_id) {
                remembered.insert(
                    (
                        job.device_id.clone(),
                        job.sensor_id.clone(),
                        job.stream_epoch,
                        job.seq,
                    ),
                    StreamSummary {
                        seq: job.seq,
                        model_version: result.model_version.clone(),
                        windows: result.summary_windows,
                        mean_score: result.mean_window_score,
                        band_means: result.band_means.clone(),
                        band_peaks: result.band_peaks.clone(),
                        waveform_peaks: result.waveform_peaks.clone(),
                        waveform_energy: result.waveform_energy,
                        waveform_samples: result.waveform_samples,
                    },
                );
            }
        }
        settle(context, &lease, &results, &failures).await;
        for result in &results {
            if let Some(span) = traced.remove(&result.frame_id) {
                span.record(
                    "outcome",
                    if result.anomalous {
                        "anomalous"
                    } else {
                        "normal"
                    },
                );
            }
        }
        for failure in &failures {
            if let Some(span) = traced.remove(&failure.frame_id) {
                span.record("outcome", "failed");
                span.record("error", failure.error.as_str());
            }
        }
    }
    heartbeat.abort();
}

/// One span per job whose frame is traced, continuing the frame's trace from ingest, while traces are
/// exported. Each attempt at a job is a span of its own in the same trace, so retries show.
fn job_spans(jobs: &[ClaimedJob], lease: &str) -> HashMap<i64, tracing::Span> {
    if !auscult_telemetry::trace::exporting() {
        return HashMap::new();
    }
    jobs.iter()
        .filter_map(|job| {
            let parent = TraceParent::parse(job.trace_parent.as_deref()?)?;
            let span = info_span!(
                parent: None,
                "job",
                frame_id = job.frame_id,
                attempt = job.attempts,
                lease,
                outcome = tracing::field::Empty,
                error = tracing::field::Empty,
            );
            parent.adopt(&span);
            Some((job.frame_id, span))
        })
        .collect()
}

/// Renews the batch's leases at a third of their length until aborted.
async fn keep_leases(context: WorkerContext, lease_holder: Arc<str>, frame_ids: Vec<i64>) {
    let lease = context.settings.jobs.lease;
    loop {
        tokio::time::sleep(lease / 3).await;
        let renewed = match context.store.get().await {
            Ok(client) => {
                auscult_store::extend_leases(&**client, &lease_holder, &frame_ids, lease).await
            }
            Err(e) => Err(e.into()),
        };
        if let Err(e) = renewed {
            warn!("renewing job leases: {e}");
        }
    }
}

async fn load_history(
    context: &WorkerContext,
    jobs: &[ClaimedJob],
) -> Result<HashMap<i64, Vec<StreamSummary>>, auscult_store::StoreError> {
    let client = context.store.get().await?;
    let refs: Vec<&ClaimedJob> = jobs.iter().collect();
    auscult_store::stream_history(&**client, &refs, context.settings.jobs.history_frames).await
}

/// The batch as rounds: the n-th frame of every sensor stream in round n, streams in sequence order.
fn rounds(jobs: &[ClaimedJob]) -> Vec<Vec<&ClaimedJob>> {
    let mut streams: BTreeMap<(&str, &str, i64), Vec<&ClaimedJob>> = BTreeMap::new();
    for job in jobs {
        streams
            .entry((&job.device_id, &job.sensor_id, job.stream_epoch))
            .or_default()
            .push(job);
    }
    let mut rounds: Vec<Vec<&ClaimedJob>> = Vec::new();
    for mut stream in streams.into_values() {
        stream.sort_by_key(|j| j.seq);
        for (i, job) in stream.into_iter().enumerate() {
            if rounds.len() <= i {
                rounds.push(Vec::new());
            }
            rounds[i].push(job);
        }
    }
    rounds
}

fn score_item(
    job: &ClaimedJob,
    remembered: &HashMap<(String, String, i64, i64), StreamSummary>,
    depth: i64,
) -> pb::ScoreItem {
    let history = (job.seq.saturating_sub(depth)..job.seq)
        .filter_map(|seq| {
            remembered.get(&(
                job.device_id.clone(),
                job.sensor_id.clone(),
                job.stream_epoch,
                seq,
            ))
        })
        .map(|s| pb::WindowSummary {
            model_version: s.model_version.clone(),
            windows: u32::try_from(s.windows).unwrap_or(0),
            mean_score: s.mean_score,
            band_means: s.band_means.clone(),
            band_peaks: s.band_peaks.clone(),
            waveform_peaks: s.waveform_peaks.clone(),
            waveform_energy: s.waveform_energy,
            waveform_samples: u64::try_from(s.waveform_samples).unwrap_or(0),
        })
        .collect();
    let (machine_type, machine_id) = job.machine.clone().unwrap_or_default();
    pb::ScoreItem {
        source: Some(pb::score_item::Source::FrameId(job.frame_id)),
        machine_type,
        machine_id,
        history,
        traceparent: String::new(),
    }
}

/// Scores one round. A call that fails as a whole — after the replicas' own retries — may have
/// failed because of one item (a frame whose analysis crashes a replica, overruns the deadline or is
/// refused), so its items are split in halves, each half sent on its own, down to single items:
/// the frame at fault fails alone, with the error it caused, and every other frame is scored.
/// When no replica is reachable at all, splitting would only multiply failing calls: whatever is
/// left of the round fails together, as an outage — not the frames' fault, so their attempts are given
/// back (up to `jobs.max_outage_retries` times) — and returns after its backoff.
async fn score_round(
    context: &WorkerContext,
    round: &[&ClaimedJob],
    items: Vec<pb::ScoreItem>,
) -> (Vec<NewResult>, Vec<FailedAttempt>) {
    let mut results = Vec::new();
    let mut failures = Vec::new();
    // Ranges of the round still to score, last pushed first.
    let mut pending = Vec::new();
    pending.push(0..round.len());
    while let Some(part) = pending.pop() {
        let jobs = &round[part.clone()];
        let started = std::time::Instant::now();
        let outcome = context
            .replicas
            .score(pb::ScoreRequest {
                items: items[part.clone()].to_vec(),
            })
            .await;
        metrics::histogram!("auscult_listener_score_call_seconds")
            .record(started.elapsed().as_secs_f64());
        let error = match outcome {
            Ok(response) if response.results.len() == jobs.len() => {
                let (scored, failed) = split_outcomes(jobs, response.results);
                results.extend(scored);
                failures.extend(failed);
                continue;
            }
            Ok(response) => format!(
                "analysis answered {} results for {} items",
                response.results.len(),
                jobs.len()
            ),
            Err(e) => {
                let error = e.to_string();
                // An outage only while the jobs have outage retries left: a frame that takes every
                // replica down with it looks like one, and once its retries are spent the round is
                // split like any other, so that it fails alone.
                let retries_left = jobs
                    .iter()
                    .all(|job| job.outage_retries < context.settings.jobs.max_outage_retries);
                let outage = matches!(e, CallError::NoReplica(_))
                    || (retries_left && !context.replicas.any_serving().await);
                if outage {
                    metrics::counter!(OUTAGE_ROUNDS_TOTAL).increment(1);
                    let items =
                        jobs.len() + pending.iter().map(ExactSizeIterator::len).sum::<usize>();
                    if outage_warning_due() {
                        warn!(
                            items,
                            "no analysis replica answers ({error}); jobs return without using an attempt \
                             (repeats are logged at debug level for a minute)"
                        );
                    } else {
                        debug!(items, "no analysis replica answers ({error})");
                    }
                    failures.extend(fail_all(jobs, &error, true));
                    for rest in pending.drain(..) {
                        failures.extend(fail_all(&round[rest], &error, true));
                    }
                    break;
                }
                error
            }
        };
        if jobs.len() > 1 {
            metrics::counter!(ROUND_SPLITS_TOTAL).increment(1);
            debug!(
                items = jobs.len(),
                "a score call failed as a whole ({error}); splitting it"
            );
            let middle = part.start + jobs.len() / 2;
            pending.push(middle..part.end);
            pending.push(part.start..middle);
        } else {
            failures.extend(fail_all(jobs, &error, false));
        }
    }
    (results, failures)
}

/// Score calls that failed as a whole and were split to find the frame at fault.
pub const ROUND_SPLITS_TOTAL: &str = "auscult_listener_round_splits_total";
/// Rounds that failed while no analysis replica answered: their jobs returned without using an attempt.
pub const OUTAGE_ROUNDS_TOTAL: &str = "auscult_listener_outage_rounds_total";

/// Whether an outage is worth a warning: the first of each minute is, the rest of a long outage is noise.
fn outage_warning_due() -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST_WARNING_S: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST_WARNING_S.load(Ordering::Relaxed);
    now >= last + 60
        && LAST_WARNING_S
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

fn fail_all(round: &[&ClaimedJob], error: &str, outage: bool) -> Vec<FailedAttempt> {
    round
        .iter()
        .map(|job| FailedAttempt {
            frame_id: job.frame_id,
            error: error.to_owned(),
            permanent: false,
            outage,
        })
        .collect()
}

/// Verdicts to store and items that failed. An item failure is retried like any other — a frame
/// that cannot be judged today may be judged by the next model (a newly enrolled machine); the
/// attempts and backoff bound what it costs — except a frame shorter than one window, which no model
/// will ever judge: it goes dead at once, with its reason.
fn split_outcomes(
    round: &[&ClaimedJob],
    outcomes: Vec<pb::ScoreResult>,
) -> (Vec<NewResult>, Vec<FailedAttempt>) {
    let mut results = Vec::new();
    let mut failures = Vec::new();
    for (job, outcome) in round.iter().zip(outcomes) {
        match outcome.outcome {
            Some(pb::score_result::Outcome::Verdict(verdict)) => {
                results.push(new_result(job.frame_id, verdict));
            }
            Some(pb::score_result::Outcome::Failure(failure)) => {
                let reason = failure
                    .reason()
                    .as_str_name()
                    .trim_start_matches("FAILURE_REASON_");
                metrics::counter!("auscult_listener_item_failures_total",
                    "reason" => reason.to_ascii_lowercase())
                .increment(1);
                failures.push(FailedAttempt {
                    frame_id: job.frame_id,
                    error: format!("{reason}: {}", failure.detail),
                    permanent: failure.reason() == pb::FailureReason::TooShort,
                    outage: false,
                });
            }
            None => failures.push(FailedAttempt {
                frame_id: job.frame_id,
                error: "analysis returned an empty result".into(),
                permanent: false,
                outage: false,
            }),
        }
    }
    (results, failures)
}

/// Scores as the database stores them: finite, so that JSON and SQL carry them unchanged.
fn finite(value: f64) -> f64 {
    if value.is_finite() {
        value
    } else if value > 0.0 {
        f64::MAX
    } else {
        f64::MIN
    }
}

fn new_result(frame_id: i64, verdict: pb::Verdict) -> NewResult {
    let summary = verdict.summary.unwrap_or_default();
    NewResult {
        frame_id,
        model_version: verdict.model_version,
        anomalous: verdict.anomalous,
        anomaly_score: finite(verdict.anomaly_score),
        threshold: finite(verdict.threshold),
        class: verdict.class,
        class_probability: verdict.class_probability,
        probabilities: verdict
            .probabilities
            .into_iter()
            .map(|p| (p.class, serde_json::json!(p.probability)))
            .collect(),
        profile: verdict.profile,
        profile_scope: verdict.profile_scope,
        top_bands: serde_json::Value::Array(
            verdict
                .top_bands
                .into_iter()
                .map(|b| {
                    serde_json::json!({
                        "low_hz": b.low_hz,
                        "high_hz": b.high_hz,
                        "measure": b.measure,
                        "departure_db": b.departure_db,
                        "z": b.z,
                    })
                })
                .collect(),
        ),
        windows: i32::try_from(verdict.windows).unwrap_or(i32::MAX),
        history_windows: i32::try_from(verdict.history_windows).unwrap_or(i32::MAX),
        clip: verdict.clip,
        parts: verdict.parts.map_or(serde_json::Value::Null, stored_parts),
        summary_windows: i32::try_from(summary.windows).unwrap_or(i32::MAX),
        mean_window_score: finite(summary.mean_score),
        band_means: summary.band_means,
        band_peaks: summary.band_peaks,
        waveform_peaks: summary
            .waveform_peaks
            .iter()
            .map(|&p| finite_f32(p))
            .collect(),
        waveform_energy: finite(summary.waveform_energy),
        waveform_samples: i64::try_from(summary.waveform_samples).unwrap_or(0),
    }
}

/// A clip's parts as the database and the search documents hold them. Names other than the
/// contract's are dropped rather than stored: they would become keywords operators filter on.
fn stored_parts(parts: pb::ScoreParts) -> serde_json::Value {
    let known = |value: String, names: &[&str]| names.contains(&value.as_str()).then_some(value);
    serde_json::json!({
        "windows": parts.windows.map(finite),
        "band_spectrum": parts.band_spectrum.map(finite),
        "band_peaks": parts.band_peaks.map(finite),
        "impulsiveness": parts.impulsiveness.map(finite),
        "impulsiveness_side": known(parts.impulsiveness_side, &score_parts::SIDES),
        "furthest": known(parts.furthest, &score_parts::PART_NAMES),
    })
}

fn finite_f32(value: f32) -> f32 {
    if value.is_finite() { value } else { 0.0 }
}

/// Completes the verdicts' jobs and fails the rest; database trouble leaves jobs to their leases.
async fn settle(
    context: &WorkerContext,
    lease_holder: &str,
    results: &[NewResult],
    failures: &[FailedAttempt],
) {
    let settings = &context.settings;
    let mut client = match context.store.get().await {
        Ok(client) => client,
        Err(e) => {
            warn!("cannot store verdicts: {e}; their jobs return when the lease expires");
            return;
        }
    };
    if !results.is_empty() {
        match auscult_store::complete_jobs(
            &mut client,
            lease_holder,
            results,
            &settings.alert_rule(),
            &settings.alerts.webhooks,
        )
        .await
        {
            Ok(completion) => {
                metrics::counter!("auscult_listener_jobs_total", "outcome" => "scored")
                    .increment(completion.completed.len() as u64);
                for stored in &completion.stored {
                    metrics::histogram!("auscult_listener_latency_from_storage_seconds")
                        .record(stored.latency_from_storage_ms / 1000.0);
                    metrics::histogram!("auscult_listener_latency_from_capture_seconds")
                        .record(stored.latency_from_capture_ms / 1000.0);
                    if stored.anomalous {
                        metrics::counter!("auscult_listener_anomalous_verdicts_total").increment(1);
                    }
                }
                let lost = results.len() - completion.completed.len();
                if lost > 0 {
                    metrics::counter!("auscult_listener_jobs_total", "outcome" => "lease_lost")
                        .increment(lost as u64);
                    warn!(
                        jobs = lost,
                        "leases were lost before completion; other listeners have them"
                    );
                }
                for alert in &completion.alerts {
                    metrics::counter!("auscult_alerts_total", "event" => alert.event.as_str())
                        .increment(1);
                    info!(
                        alert = alert.alert_id,
                        event = alert.event.as_str(),
                        device = %alert.device_id,
                        sensor = %alert.sensor_id,
                        machine = %alert.machine,
                        "alert"
                    );
                }
                debug!(scored = completion.completed.len(), "batch round stored");
            }
            Err(e) => warn!("storing verdicts: {e}; their jobs return when the lease expires"),
        }
    }
    if !failures.is_empty() {
        let policy = auscult_store::RetryPolicy {
            max_attempts: settings.jobs.max_attempts,
            max_outage_retries: settings.jobs.max_outage_retries,
            backoff: settings.jobs.retry_backoff,
        };
        match auscult_store::fail_jobs(&**client, lease_holder, failures, policy).await {
            Ok(dead) => {
                metrics::counter!("auscult_listener_jobs_total", "outcome" => "retry")
                    .increment(failures.len() as u64 - dead);
                if dead > 0 {
                    metrics::counter!("auscult_listener_jobs_total", "outcome" => "dead")
                        .increment(dead);
                    warn!(jobs = dead, error = %failures[0].error, "jobs went dead after their last attempt");
                }
            }
            Err(e) => warn!("recording failed attempts: {e}"),
        }
    }
}

/// Waits at most `grace` for `tasks`; returns whether they all finished.
pub async fn join_within(tasks: Vec<tokio::task::JoinHandle<()>>, grace: Duration) -> bool {
    tokio::time::timeout(grace, futures_util::future::join_all(tasks))
        .await
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_parts_keep_the_contracts_names_and_finite_values_only() {
        let stored = stored_parts(pb::ScoreParts {
            windows: Some(0.4),
            band_spectrum: None,
            band_peaks: Some(f64::INFINITY),
            impulsiveness: Some(1.7),
            impulsiveness_side: "duller".into(),
            furthest: "<script>".into(),
        });
        assert_eq!(stored["windows"], 0.4);
        assert!(stored["band_spectrum"].is_null());
        assert_eq!(stored["band_peaks"], f64::MAX);
        assert_eq!(stored["impulsiveness_side"], "duller");
        assert!(stored["furthest"].is_null(), "{stored}");
    }
}
