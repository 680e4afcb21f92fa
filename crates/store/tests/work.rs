//! The work queue, verdicts, alerts and sensor health against a real, throwaway PostgreSQL.

mod common;

use common::{connect, migrated};

use std::time::{Duration, SystemTime};

use auscult_frame::{Frame, Limits, RawFrame, SampleEncoding, encode_pcm_s16le};
use auscult_store::{AlertEvent, AlertRule, FailedAttempt, HealthRule, NewResult};
use auscult_testkit::PostgresServer;
use bytes::Bytes;

/// A migrated database holding `count` frames of one sensor, one second apart in capture time.
async fn with_frames(count: u64) -> (PostgresServer, tokio_postgres::Client) {
    with_streams(1, count).await
}

/// A migrated database holding `count` frames of each of `sensors` sensors of one device, one second apart
/// in capture time, sensor by sensor (`mic-0`'s frames first).
async fn with_streams(sensors: u32, count: u64) -> (PostgresServer, tokio_postgres::Client) {
    let (pg, mut client) = migrated().await;
    auscult_store::add_device(&mut client, "gw-1", "")
        .await
        .expect("device");
    let now = SystemTime::now();
    let frames: Vec<Frame> = (0..sensors)
        .flat_map(|sensor| (0..count).map(move |seq| (sensor, seq)))
        .map(|(sensor, seq)| {
            RawFrame {
                device_id: "gw-1".into(),
                sensor_id: format!("mic-{sensor}"),
                stream_epoch: 1,
                seq,
                captured_at: Some(now - Duration::from_secs(count - seq)),
                sample_rate_hz: 16_000,
                channels: 1,
                encoding: Ok(SampleEncoding::PcmS16le),
                samples: Bytes::from(encode_pcm_s16le(&vec![0.1; 160])),
            }
            .validate(&Limits::default(), now)
            .expect("valid frame")
        })
        .collect();
    for stream in frames.chunks(usize::try_from(count.max(1)).expect("count")) {
        let refs: Vec<&Frame> = stream.iter().collect();
        auscult_store::insert_frames(&mut client, &refs, now)
            .await
            .expect("insert");
    }
    (pg, client)
}

/// Completes `jobs` under the claim `lease`, each judged normal, as a listener does once it scored them.
async fn complete_as_normal(
    client: &mut tokio_postgres::Client,
    lease: &str,
    jobs: &[auscult_store::ClaimedJob],
) -> auscult_store::Completion {
    let verdicts: Vec<NewResult> = jobs.iter().map(|j| verdict(j.frame_id, false)).collect();
    auscult_store::complete_jobs(client, lease, &verdicts, &AlertRule::default(), &[])
        .await
        .expect("complete")
}

/// Claims the next job as listener `l` and completes it, as a listener working one frame at a time does.
async fn work_one(client: &mut tokio_postgres::Client) -> usize {
    let claim = auscult_store::claim_jobs(client, "l", 1, Duration::from_secs(30), 3)
        .await
        .expect("claim");
    complete_as_normal(client, &claim.lease, &claim.jobs).await;
    claim.jobs.len()
}

fn verdict(frame_id: i64, anomalous: bool) -> NewResult {
    NewResult {
        frame_id,
        model_version: "v1".into(),
        anomalous,
        anomaly_score: if anomalous { 9.0 } else { 1.0 },
        threshold: 4.0,
        class: "valve/section_00/pat_00/normal".into(),
        class_probability: 0.9,
        probabilities: serde_json::Map::from_iter([(
            "valve/section_00/pat_00/normal".to_string(),
            serde_json::json!(0.9),
        )]),
        profile: "valve/section_00".into(),
        profile_scope: "machine".into(),
        top_bands: serde_json::json!([{"low_hz": 100.0, "high_hz": 200.0, "measure": "peak", "departure_db": -4.0, "z": -3.0}]),
        windows: 1,
        history_windows: 0,
        clip: true,
        parts: serde_json::json!({"windows": 0.3, "impulsiveness": 1.8, "impulsiveness_side": "duller",
            "furthest": "impulsiveness"}),
        summary_windows: 1,
        mean_window_score: 1.5,
        band_means: vec![-40.0; 64],
        band_peaks: vec![-20.0; 64],
        waveform_peaks: vec![0.5],
        waveform_energy: 100.0,
        waveform_samples: 16_000,
    }
}

async fn job_states(client: &tokio_postgres::Client) -> Vec<(String, i64)> {
    client
        .query(
            "SELECT state, count(*) FROM analysis_jobs GROUP BY state ORDER BY state",
            &[],
        )
        .await
        .expect("states")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn claims_skip_each_other_and_expired_leases_return_to_the_queue() {
    let (pg, mut a) = with_streams(2, 4).await;
    let mut b = connect(&pg).await;
    let lease = Duration::from_secs(30);
    let first = auscult_store::claim_jobs(&mut a, "a", 4, lease, 3)
        .await
        .expect("claim a");
    let second = auscult_store::claim_jobs(&mut b, "b", 4, lease, 3)
        .await
        .expect("claim b");
    assert_eq!((first.jobs.len(), second.jobs.len()), (4, 4));
    // Each claim holds one whole stream, in sequence order, the oldest stream first.
    assert!(
        first.jobs.iter().all(|j| j.sensor_id == "mic-0"),
        "{first:?}"
    );
    assert!(
        second.jobs.iter().all(|j| j.sensor_id == "mic-1"),
        "{second:?}"
    );
    let seqs: Vec<i64> = first.jobs.iter().map(|j| j.seq).collect();
    assert_eq!(seqs, [0, 1, 2, 3]);
    assert!(
        first
            .jobs
            .iter()
            .all(|j| second.jobs.iter().all(|k| k.frame_id != j.frame_id)),
        "no job is held twice"
    );
    assert!(first.jobs.iter().all(|j| j.attempts == 1));
    assert!(
        auscult_store::claim_jobs(&mut a, "a", 6, lease, 3)
            .await
            .expect("claim again")
            .jobs
            .is_empty()
    );

    // b's lease lapses (b died): its jobs go to whoever claims next, with the attempt counted.
    b.execute(
        "UPDATE analysis_jobs SET lease_expires_at = now() - interval '1 s' WHERE lease_owner = $1",
        &[&second.lease],
    )
    .await
    .expect("expire");
    let retaken = auscult_store::claim_jobs(&mut a, "a", 10, lease, 3)
        .await
        .expect("reclaim");
    assert_eq!(retaken.jobs.len(), 4);
    assert!(retaken.jobs.iter().all(|j| j.attempts == 2));

    // b comes back and tries to complete what it no longer holds: nothing is written for it.
    let stale = auscult_store::complete_jobs(
        &mut b,
        &second.lease,
        &[verdict(second.jobs[0].frame_id, false)],
        &AlertRule::default(),
        &[],
    )
    .await
    .expect("complete stale");
    assert!(stale.completed.is_empty() && stale.stored.is_empty());

    // Heartbeats keep only one's own leases.
    let ids: Vec<i64> = retaken.jobs.iter().map(|j| j.frame_id).collect();
    assert_eq!(
        auscult_store::extend_leases(&a, &retaken.lease, &ids, lease)
            .await
            .expect("extend"),
        4
    );
    assert_eq!(
        auscult_store::extend_leases(&a, &second.lease, &ids, lease)
            .await
            .expect("extend"),
        0
    );
}

#[tokio::test]
async fn a_stream_another_claim_holds_is_left_to_it() {
    let (pg, mut a) = with_frames(7).await;
    let mut b = connect(&pg).await;
    let lease = Duration::from_secs(30);
    let seqs = |claim: &auscult_store::Claim| claim.jobs.iter().map(|j| j.seq).collect::<Vec<_>>();
    let first = auscult_store::claim_jobs(&mut a, "a", 3, lease, 3)
        .await
        .expect("claim a");
    assert_eq!(seqs(&first), [0, 1, 2]);
    // The rest of the stream waits: scored now, its frames would miss their predecessors' verdicts.
    let second = auscult_store::claim_jobs(&mut b, "b", 3, lease, 3)
        .await
        .expect("claim b");
    assert!(second.jobs.is_empty(), "{second:?}");
    // Once a's verdicts are stored, the stream is free again and its next frames find them.
    complete_as_normal(&mut a, &first.lease, &first.jobs).await;
    let third = auscult_store::claim_jobs(&mut b, "b", 3, lease, 3)
        .await
        .expect("claim b again");
    assert_eq!(seqs(&third), [3, 4, 5]);
    // A frame waiting out a retry's backoff does not hold its stream: the frames after it go on, as
    // they would have live.
    let failed = FailedAttempt {
        frame_id: third.jobs[0].frame_id,
        error: "UNSCORABLE: test".into(),
        permanent: false,
        outage: false,
    };
    auscult_store::fail_jobs(
        &b,
        &third.lease,
        &[failed],
        policy(3, Duration::from_secs(60)),
    )
    .await
    .expect("fail");
    complete_as_normal(&mut b, &third.lease, &third.jobs[1..]).await;
    let fourth = auscult_store::claim_jobs(&mut a, "a", 3, lease, 3)
        .await
        .expect("claim a again");
    assert_eq!(seqs(&fourth), [6]);
}

#[tokio::test]
async fn claims_made_at_the_same_moment_never_hold_a_job_twice() {
    let (pg, _client) = with_streams(4, 3).await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(connect(&pg).await);
    }
    let lease = Duration::from_secs(30);
    let claims = futures_util::future::join_all(clients.iter_mut().enumerate().map(
        |(i, client)| async move {
            auscult_store::claim_jobs(client, &format!("listener-{i}"), 3, lease, 3)
                .await
                .expect("claim")
        },
    ))
    .await;
    let mut held: Vec<i64> = claims
        .iter()
        .flat_map(|c| c.jobs.iter().map(|j| j.frame_id))
        .collect();
    assert!(claims.iter().all(|c| c.jobs.len() <= 3));
    // No stream is split between claims.
    for claim in &claims {
        for job in &claim.jobs {
            let others = claims
                .iter()
                .filter(|c| c.lease != claim.lease)
                .flat_map(|c| &c.jobs);
            assert!(
                others.into_iter().all(|o| o.sensor_id != job.sensor_id),
                "stream {} split between claims: {claims:?}",
                job.sensor_id
            );
        }
    }
    held.sort_unstable();
    let claimed = held.len();
    held.dedup();
    assert_eq!(held.len(), claimed, "a job was claimed twice: {claims:?}");
    assert_eq!(claimed, 12, "every job was claimed by one of them");
}

#[tokio::test]
async fn a_listener_restarted_under_the_same_name_cannot_settle_its_predecessors_jobs() {
    let (_pg, mut client) = with_frames(2).await;
    let lease = Duration::from_secs(30);
    let before = auscult_store::claim_jobs(&mut client, "listener-0", 2, lease, 3)
        .await
        .expect("claim");
    // The listener dies; its leases lapse; its successor, under the same name, claims the jobs.
    client
        .execute(
            "UPDATE analysis_jobs SET lease_expires_at = now() - interval '1 s'",
            &[],
        )
        .await
        .expect("expire");
    let after = auscult_store::claim_jobs(&mut client, "listener-0", 2, lease, 3)
        .await
        .expect("reclaim");
    assert_eq!(after.jobs.len(), 2);
    assert_ne!(before.lease, after.lease, "every claim has its own lease");
    assert!(after.lease.starts_with("listener-0#"));

    // A late settlement of the first claim (a batch still in flight when the process froze) does nothing…
    let ids: Vec<i64> = before.jobs.iter().map(|j| j.frame_id).collect();
    let stale = auscult_store::complete_jobs(
        &mut client,
        &before.lease,
        &[verdict(ids[0], false)],
        &AlertRule::default(),
        &[],
    )
    .await
    .expect("stale completion");
    assert!(stale.completed.is_empty());
    let failure = FailedAttempt {
        frame_id: ids[1],
        error: "late".into(),
        permanent: true,
        outage: false,
    };
    assert_eq!(
        auscult_store::fail_jobs(
            &client,
            &before.lease,
            &[failure],
            policy(3, Duration::ZERO)
        )
        .await
        .expect("stale failure"),
        0
    );
    assert_eq!(
        auscult_store::extend_leases(&client, &before.lease, &ids, lease)
            .await
            .expect("stale heartbeat"),
        0
    );
    assert_eq!(job_states(&client).await, vec![("running".into(), 2)]);
    // …and the current claim settles them.
    let done = auscult_store::complete_jobs(
        &mut client,
        &after.lease,
        &[verdict(ids[0], false), verdict(ids[1], false)],
        &AlertRule::default(),
        &[],
    )
    .await
    .expect("completion");
    assert_eq!(done.completed.len(), 2);
}

#[tokio::test]
async fn failed_attempts_back_off_and_die_after_max_attempts() {
    let (_pg, mut client) = with_frames(2).await;
    let lease = Duration::from_secs(30);
    let max = 2;
    let claim = auscult_store::claim_jobs(&mut client, "l", 10, lease, max)
        .await
        .expect("claim");
    let (poison, fine) = (claim.jobs[0].frame_id, claim.jobs[1].frame_id);
    let failure = |permanent| FailedAttempt {
        frame_id: poison,
        error: "analysis failed".into(),
        permanent,
        outage: false,
    };
    let dead = auscult_store::fail_jobs(
        &client,
        &claim.lease,
        &[failure(false)],
        policy(max, Duration::ZERO),
    )
    .await
    .expect("fail");
    assert_eq!(dead, 0, "one attempt of two used");
    let done = auscult_store::complete_jobs(
        &mut client,
        &claim.lease,
        &[verdict(fine, false)],
        &AlertRule::default(),
        &[],
    )
    .await
    .expect("complete");
    assert_eq!(done.completed, vec![fine]);
    assert_eq!(done.stored.len(), 1);
    assert!(done.stored[0].latency_from_storage_ms >= 0.0);

    let again = auscult_store::claim_jobs(&mut client, "l", 10, lease, max)
        .await
        .expect("claim again");
    assert_eq!(again.jobs.len(), 1);
    assert_eq!(again.jobs[0].attempts, 2);
    let dead = auscult_store::fail_jobs(
        &client,
        &again.lease,
        &[failure(false)],
        policy(max, Duration::ZERO),
    )
    .await
    .expect("fail again");
    assert_eq!(dead, 1);
    let error: String = client
        .query_one(
            "SELECT last_error FROM analysis_jobs WHERE frame_id = $1 AND state = 'dead'",
            &[&poison],
        )
        .await
        .expect("dead job")
        .get(0);
    assert_eq!(error, "analysis failed");
    assert_eq!(
        job_states(&client).await,
        vec![("dead".into(), 1), ("done".into(), 1)]
    );
    let depth = auscult_store::queue_depth(&client).await.expect("depth");
    assert_eq!((depth.ready, depth.running, depth.dead), (0, 0, 1));
}

/// `max_attempts` attempts, two outage retries, `backoff`.
fn policy(max_attempts: i32, backoff: Duration) -> auscult_store::RetryPolicy {
    auscult_store::RetryPolicy {
        max_attempts,
        max_outage_retries: 2,
        backoff,
    }
}

#[tokio::test]
async fn failures_during_an_analysis_outage_give_their_attempt_back_a_bounded_number_of_times() {
    let (_pg, mut client) = with_frames(1).await;
    let lease = Duration::from_secs(30);
    let max = 1;
    let outage = |frame_id| FailedAttempt {
        frame_id,
        error: "no analysis replica answers".into(),
        permanent: false,
        outage: true,
    };
    // One attempt allowed, yet two outages cost nothing: the job is claimed a third time. Then the
    // outage retries are used up, and the third outage counts as the attempt, the last one: a frame
    // that looks like an outage every time still ends.
    for (round, dies) in [(1, 0), (2, 0), (3, 1)] {
        let claim = auscult_store::claim_jobs(&mut client, "l", 10, lease, max)
            .await
            .expect("claim");
        assert_eq!(claim.jobs.len(), 1, "round {round}: the job is back");
        assert_eq!(
            claim.jobs[0].attempts, 1,
            "round {round}: its attempt was given back"
        );
        let dead = auscult_store::fail_jobs(
            &client,
            &claim.lease,
            &[outage(claim.jobs[0].frame_id)],
            policy(max, Duration::ZERO),
        )
        .await
        .expect("fail");
        assert_eq!(dead, dies, "round {round}");
    }
    let retries: i32 = client
        .query_one("SELECT outage_retries FROM analysis_jobs", &[])
        .await
        .expect("job")
        .get(0);
    assert_eq!(retries, 3);
}

#[tokio::test]
async fn verdicts_are_stored_once_per_model_version_and_feed_the_next_frames_history() {
    let (_pg, mut client) = with_frames(4).await;
    let lease = Duration::from_secs(30);
    let claim = auscult_store::claim_jobs(&mut client, "l", 3, lease, 3)
        .await
        .expect("claim");
    let results: Vec<NewResult> = claim
        .jobs
        .iter()
        .map(|j| verdict(j.frame_id, false))
        .collect();
    let done = auscult_store::complete_jobs(
        &mut client,
        &claim.lease,
        &results,
        &AlertRule::default(),
        &[],
    )
    .await
    .expect("complete");
    assert_eq!(done.stored.len(), 3);
    let last = auscult_store::claim_jobs(&mut client, "l", 3, lease, 3)
        .await
        .expect("claim last");
    let job = &last.jobs[0];
    assert_eq!(job.seq, 3);
    let history = auscult_store::stream_history(&client, &[job], 2)
        .await
        .expect("history");
    let summaries = &history[&job.frame_id];
    assert_eq!(summaries.len(), 2, "the two frames before, not three");
    assert_eq!(summaries[0].band_peaks, vec![-20.0; 64]);
    assert_eq!(
        (
            summaries[0].waveform_peaks.clone(),
            summaries[0].waveform_energy,
            summaries[0].waveform_samples
        ),
        (vec![0.5], 100.0, 16_000),
        "the waveform comes back for the stream's impulsiveness"
    );

    // The same verdict again (a retry after a lost commit acknowledgement) stores nothing new.
    client
        .execute(
            "UPDATE analysis_jobs SET state = 'running', lease_owner = $2 WHERE frame_id = $1",
            &[&results[0].frame_id, &claim.lease],
        )
        .await
        .expect("reopen");
    let again = auscult_store::complete_jobs(
        &mut client,
        &claim.lease,
        &results[..1],
        &AlertRule::default(),
        &[],
    )
    .await
    .expect("complete again");
    assert_eq!(again.completed.len(), 1);
    assert!(again.stored.is_empty());
    let count: i64 = client
        .query_one("SELECT count(*) FROM analysis_results", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(count, 3);
}

#[tokio::test]
async fn an_alert_fires_at_k_of_m_once_and_resolves_when_the_verdicts_clear() {
    let (_pg, mut client) = with_frames(12).await;
    let rule = AlertRule {
        fire_at: 2,
        window: 3,
        clear_at: 0,
    };
    let webhooks = vec!["http://127.0.0.1:9/hook".to_string()];
    let pattern = [
        false, true, false, false, true, true, true, true, false, false, false, false,
    ];
    let mut events = Vec::new();
    for anomalous in pattern {
        let claim = auscult_store::claim_jobs(&mut client, "l", 1, Duration::from_secs(30), 3)
            .await
            .expect("claim");
        let done = auscult_store::complete_jobs(
            &mut client,
            &claim.lease,
            &[verdict(claim.jobs[0].frame_id, anomalous)],
            &rule,
            &webhooks,
        )
        .await
        .expect("complete");
        events.extend(done.alerts.iter().map(|a| a.event));
    }
    // One noisy second does not fire; two of three do, once; three clear verdicts resolve it.
    assert_eq!(events, vec![AlertEvent::Fired, AlertEvent::Resolved]);
    let alerts = auscult_store::list_alerts(&client).await.expect("alerts");
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].state, "resolved");

    let deliveries = auscult_store::claim_deliveries(&mut client, 10, Duration::from_secs(30), 5)
        .await
        .expect("deliveries");
    assert_eq!(deliveries.len(), 2);
    assert_eq!(deliveries[0].body["event"], "fired");
    assert_eq!(deliveries[1].body["event"], "resolved");
    assert_eq!(
        deliveries[0].body["idempotency_key"],
        format!("auscult-alert-{}-fired", alerts[0].id)
    );
    auscult_store::settle_delivery(&client, deliveries[0].id, Ok(()), Duration::ZERO)
        .await
        .expect("delivered");
    auscult_store::settle_delivery(
        &client,
        deliveries[1].id,
        Err("connection refused"),
        Duration::ZERO,
    )
    .await
    .expect("retry");
    let retried = auscult_store::claim_deliveries(&mut client, 10, Duration::from_secs(30), 5)
        .await
        .expect("deliveries again");
    assert_eq!(retried.len(), 1, "only the undelivered event is sent again");
    assert_eq!(retried[0].attempts, 2);
}

#[tokio::test]
async fn a_sensor_that_stops_sending_goes_silent_once_and_recovers() {
    let (_pg, mut client) = with_frames(5).await;
    // The frames were captured a second apart; claiming them teaches the sensor's usual interval.
    for _ in 0..5 {
        assert_eq!(work_one(&mut client).await, 1);
    }
    let usual: f64 = client
        .query_one("SELECT usual_interval_s FROM sensor_health", &[])
        .await
        .expect("health")
        .get(0);
    assert!((usual - 1.0).abs() < 0.01, "usual interval {usual}");

    let rule = HealthRule {
        silent_after_intervals: 3.0,
        min_silence: Duration::ZERO,
        ..HealthRule::default()
    };
    assert!(
        auscult_store::watch_sensors(&client, &rule)
            .await
            .expect("watch")
            .is_empty(),
        "just heard from"
    );
    // Ten seconds pass without a frame.
    client
        .execute(
            "UPDATE sensor_health SET last_received_at = now() - interval '10 s'",
            &[],
        )
        .await
        .expect("age");
    let events = auscult_store::watch_sensors(&client, &rule)
        .await
        .expect("watch");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, "silent");
    assert!(
        auscult_store::watch_sensors(&client, &rule)
            .await
            .expect("watch again")
            .is_empty(),
        "one event per change"
    );
    assert_eq!(
        auscult_store::sensor_states(&client).await.expect("states"),
        vec![("silent".to_string(), 1)]
    );
    client
        .execute("UPDATE sensor_health SET last_received_at = now()", &[])
        .await
        .expect("heard again");
    let events = auscult_store::watch_sensors(&client, &rule)
        .await
        .expect("watch");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, "recovered");
}

#[tokio::test]
async fn a_sensor_sending_at_twice_its_usual_rate_is_reported_once() {
    let (_pg, mut client) = with_frames(40).await;
    for _ in 0..40 {
        assert_eq!(work_one(&mut client).await, 1);
    }
    let rule = HealthRule {
        min_frames: 30,
        ..HealthRule::default()
    };
    assert!(
        auscult_store::watch_sensors(&client, &rule)
            .await
            .expect("watch")
            .is_empty(),
        "one frame a second, as usual"
    );
    // Lately a frame every 0.3 s against a usual second.
    client
        .execute(
            "UPDATE sensor_health SET recent_interval_s = 0.3, last_received_at = now()",
            &[],
        )
        .await
        .expect("faster");
    let events = auscult_store::watch_sensors(&client, &rule)
        .await
        .expect("watch");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, "rate_changed");
    assert!(
        auscult_store::watch_sensors(&client, &rule)
            .await
            .expect("watch again")
            .is_empty()
    );
    client
        .execute("UPDATE sensor_health SET recent_interval_s = 1.0", &[])
        .await
        .expect("back to normal");
    let events = auscult_store::watch_sensors(&client, &rule)
        .await
        .expect("watch");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, "recovered");
}
