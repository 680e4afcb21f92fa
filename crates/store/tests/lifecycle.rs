//! Partitioned storage and retention against a real, throwaway PostgreSQL: the upgrade of a database that
//! holds frames, deduplication across partitions, and maintenance passes that keep what matters.

mod common;

use common::connect;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use auscult_frame::{Frame, Limits, RawFrame, SampleEncoding, encode_pcm_s16le};
use auscult_store::{InsertOutcome, PassOutcome, RetentionPolicy};
use auscult_testkit::PostgresServer;
use bytes::Bytes;

const DAY: Duration = Duration::from_secs(86_400);

/// A migrated database with the devices these tests send for.
async fn migrated_with_devices() -> (PostgresServer, tokio_postgres::Client) {
    let (pg, client) = common::migrated().await;
    add_devices(&client).await;
    (pg, client)
}

async fn add_devices(client: &tokio_postgres::Client) {
    client
        .batch_execute("INSERT INTO devices (device_id) VALUES ('gw-1'), ('gw-2')")
        .await
        .expect("devices");
}

/// A valid frame captured at `captured_at` whose samples are all `level`.
fn frame_at(device: &str, sensor: &str, seq: u64, captured_at: SystemTime, level: f32) -> Frame {
    RawFrame {
        device_id: device.into(),
        sensor_id: sensor.into(),
        stream_epoch: 1,
        seq,
        captured_at: Some(captured_at),
        sample_rate_hz: 16_000,
        channels: 1,
        encoding: Ok(SampleEncoding::PcmS16le),
        samples: Bytes::from(encode_pcm_s16le(&vec![level; 160])),
    }
    // Judged as of its own capture time: these tests place frames in the past and the future on purpose.
    .validate(&Limits::default(), captured_at)
    .expect("valid frame")
}

async fn store(client: &mut tokio_postgres::Client, frames: &[Frame]) -> Vec<InsertOutcome> {
    let refs: Vec<&Frame> = frames.iter().collect();
    auscult_store::insert_frames(client, &refs, SystemTime::now())
        .await
        .expect("insert")
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// The next UTC midnight: a boundary between two daily partitions of `frames`.
fn next_midnight() -> SystemTime {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    UNIX_EPOCH + Duration::from_secs((now.as_secs() / 86_400 + 1) * 86_400)
}

async fn partition_of(client: &tokio_postgres::Client, frame_id: i64) -> String {
    client
        .query_one(
            "SELECT tableoid::regclass::text FROM frames WHERE id = $1",
            &[&frame_id],
        )
        .await
        .expect("frame")
        .get(0)
}

async fn frame_id(client: &tokio_postgres::Client, sensor: &str, seq: i64) -> i64 {
    client
        .query_one(
            "SELECT id FROM frames WHERE sensor_id = $1 AND seq = $2",
            &[&sensor, &seq],
        )
        .await
        .expect("frame id")
        .get(0)
}

#[tokio::test]
async fn a_database_holding_frames_is_partitioned_in_place_and_keeps_deduplicating_them() {
    let pg = PostgresServer::start().expect("postgres");
    let mut client = connect(&pg).await;
    auscult_store::migrate_to(&mut client, 4)
        .await
        .expect("schema of the previous release");
    add_devices(&client).await;
    let now = SystemTime::now();
    let old: Vec<Frame> = (0..40)
        .map(|seq| {
            frame_at(
                "gw-1",
                "mic-1",
                seq,
                now - DAY * 2 + Duration::from_secs(seq),
                0.1,
            )
        })
        .collect();
    // Written as the previous release wrote them: COPY, then their jobs.
    let tx = client.transaction().await.expect("tx");
    let refs: Vec<&Frame> = old.iter().collect();
    auscult_store::copy_frames(&tx, "frames", &refs, None, now)
        .await
        .expect("copy");
    tx.commit().await.expect("commit");
    client
        .batch_execute(
            "INSERT INTO analysis_jobs (frame_id) SELECT id FROM frames;
             UPDATE analysis_jobs SET state = 'done' WHERE frame_id % 2 = 0;
             INSERT INTO health_events (device_id, sensor_id, kind, detail) VALUES ('gw-1', 'mic-1', 'silent', 'x');",
        )
        .await
        .expect("work of the previous release");
    let max_id = count(&client, "SELECT max(id) FROM frames").await;

    let applied = auscult_store::migrate(&mut client).await.expect("upgrade");
    assert_eq!(
        applied,
        (5..=auscult_store::LATEST_VERSION).collect::<Vec<_>>()
    );

    // Nothing lost, nothing rewritten: the old table is the first partition.
    assert_eq!(count(&client, "SELECT count(*) FROM frames").await, 40);
    assert_eq!(
        count(&client, "SELECT count(*) FROM analysis_jobs").await,
        40
    );
    assert_eq!(
        count(&client, "SELECT count(*) FROM health_events").await,
        1
    );
    assert_eq!(
        partition_of(&client, max_id).await,
        "frames_before_partitioning"
    );
    let audio = auscult_store::frame_audio(&client, &[max_id])
        .await
        .expect("audio");
    assert_eq!(audio[&max_id].samples, old[39].samples.to_vec());

    // A resend of a frame stored before the upgrade is still recognised, a reused key still refused.
    let conflicting = frame_at("gw-1", "mic-1", 5, now, 0.9);
    assert_eq!(
        store(&mut client, &[old[5].clone(), conflicting]).await,
        [InsertOutcome::Duplicate, InsertOutcome::Conflict]
    );
    // New frames take ids after the old ones. The adopted partition reaches the end of today; later frames
    // land in daily partitions.
    let today = frame_at("gw-1", "mic-1", 100, now, 0.2);
    let tomorrow = frame_at(
        "gw-1",
        "mic-1",
        101,
        next_midnight() + Duration::from_secs(3_600),
        0.2,
    );
    assert_eq!(
        store(&mut client, &[today, tomorrow]).await,
        [InsertOutcome::Stored, InsertOutcome::Stored]
    );
    let today_id = frame_id(&client, "mic-1", 100).await;
    assert!(today_id > max_id, "id {today_id} after {max_id}");
    assert_eq!(
        partition_of(&client, today_id).await,
        "frames_before_partitioning"
    );
    let tomorrow_id = frame_id(&client, "mic-1", 101).await;
    assert!(
        partition_of(&client, tomorrow_id)
            .await
            .starts_with("frames_p")
    );
    assert_eq!(count(&client, "SELECT count(*) FROM frames").await, 42);
}

#[tokio::test]
async fn a_resend_is_recognised_whichever_partition_holds_the_first_copy() {
    let (_pg, mut client) = migrated_with_devices().await;
    let boundary = next_midnight();
    let before = boundary - Duration::from_millis(1);
    let after = boundary + Duration::from_millis(1);

    let first = frame_at("gw-1", "mic-1", 7, before, 0.1);
    assert_eq!(
        store(&mut client, std::slice::from_ref(&first)).await,
        [InsertOutcome::Stored]
    );
    assert_eq!(
        store(&mut client, std::slice::from_ref(&first)).await,
        [InsertOutcome::Duplicate]
    );

    // The same key stamped one partition later: the same audio is a resend, other audio a reused key.
    let mut restamped = first.clone();
    restamped.captured_at = after;
    let reused = frame_at("gw-1", "mic-1", 7, after, 0.5);
    assert_eq!(
        store(&mut client, &[restamped, reused]).await,
        [InsertOutcome::Duplicate, InsertOutcome::Conflict]
    );
    assert_eq!(
        count(&client, "SELECT count(*) FROM frames WHERE seq = 7").await,
        1
    );
    // And the other way round: first copy after the boundary, the reused key before it.
    let later_first = frame_at("gw-1", "mic-1", 8, after, 0.1);
    let earlier_reuse = frame_at("gw-1", "mic-1", 8, before, 0.7);
    assert_eq!(
        store(&mut client, &[later_first]).await,
        [InsertOutcome::Stored]
    );
    assert_eq!(
        store(&mut client, &[earlier_reuse]).await,
        [InsertOutcome::Conflict]
    );
    let first_id = frame_id(&client, "mic-1", 7).await;
    let second_id = frame_id(&client, "mic-1", 8).await;
    assert_ne!(
        partition_of(&client, first_id).await,
        partition_of(&client, second_id).await,
        "the two frames straddle a partition boundary"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writers_racing_with_one_key_in_two_partitions_store_it_once() {
    let (pg, _client) = migrated_with_devices().await;
    let boundary = next_midnight();
    const WRITERS: usize = 6;
    const KEYS: u64 = 40;
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let mut client = connect(&pg).await;
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for seq in 0..KEYS {
                // Each writer stamps the key on its own side of the boundary with its own audio.
                let captured_at = if writer % 2 == 0 {
                    boundary - Duration::from_millis(1 + writer as u64)
                } else {
                    boundary + Duration::from_millis(writer as u64)
                };
                let frame = frame_at(
                    "gw-1",
                    "mic-1",
                    seq,
                    captured_at,
                    0.05 * (writer + 1) as f32,
                );
                outcomes.push(store(&mut client, &[frame]).await[0]);
            }
            outcomes
        }));
    }
    let mut stored = vec![0; KEYS as usize];
    for task in tasks {
        for (seq, outcome) in task.await.expect("writer").into_iter().enumerate() {
            match outcome {
                InsertOutcome::Stored => stored[seq] += 1,
                InsertOutcome::Conflict => {}
                InsertOutcome::Duplicate => panic!("different audio is never a duplicate"),
            }
        }
    }
    assert!(stored.iter().all(|n| *n == 1), "stored per key: {stored:?}");
    let client = connect(&pg).await;
    assert_eq!(
        count(&client, "SELECT count(*) FROM frames").await,
        KEYS as i64
    );
}

/// A verdict on `frame_id`, written as the listener writes it.
async fn verdict(client: &tokio_postgres::Client, frame_id: i64, anomalous: bool) {
    client
        .execute(
            "INSERT INTO analysis_results (frame_id, model_version, device_id, sensor_id, stream_epoch, seq,
                 captured_at, stored_at, anomalous, anomaly_score, threshold, class, class_probability,
                 probabilities, profile, profile_scope, top_bands, windows, history_windows, clip,
                 summary_windows, mean_window_score, band_means, band_peaks, latency_from_capture_ms,
                 latency_from_storage_ms)
             SELECT id, 'm1', device_id, sensor_id, stream_epoch, seq, captured_at, received_at, $2, 1.0, 0.5,
                    'fan/normal', 0.9, '{}', 'fan/id_00', 'machine', '[]', 1, 0, true, 1, 0.5, '{}', '{}', 0, 0
             FROM frames WHERE id = $1",
            &[&frame_id, &anomalous],
        )
        .await
        .expect("verdict");
}

#[tokio::test]
async fn a_pass_keeps_the_audio_around_anomalies_and_alerts_and_drops_expired_partitions_whole() {
    let (_pg, mut client) = migrated_with_devices().await;
    // Documents are queued for Elasticsearch, so the pass has queued documents of dropped frames to prune.
    auscult_store::enable_indexing(&client)
        .await
        .expect("indexing on");
    let start = SystemTime::now();
    let at = |s: u64| start + Duration::from_secs(s);
    let mic1: Vec<Frame> = (0..30)
        .map(|s| frame_at("gw-1", "mic-1", s, at(s), 0.1))
        .collect();
    let mic2: Vec<Frame> = (0..30)
        .map(|s| frame_at("gw-2", "mic-2", s, at(s), 0.1))
        .collect();
    store(&mut client, &mic1).await;
    store(&mut client, &mic2).await;
    // mic-1: one anomalous verdict at second 10. mic-2: a resolved alert over seconds 12..=14.
    for seq in 0..30 {
        verdict(&client, frame_id(&client, "mic-1", seq).await, seq == 10).await;
        verdict(&client, frame_id(&client, "mic-2", seq).await, false).await;
    }
    let (first, last) = (
        frame_id(&client, "mic-2", 12).await,
        frame_id(&client, "mic-2", 14).await,
    );
    let alert_id: i64 = client
        .query_one(
            "INSERT INTO alerts (device_id, sensor_id, machine, state, resolved_at, first_frame_id, last_frame_id,
                                 anomalous_windows, window_count, peak_score, threshold, model_version, top_bands)
             VALUES ('gw-2', 'mic-2', 'fan/id_00', 'resolved', now(), $1, $2, 3, 5, 2.0, 1.0, 'm1', '[]')
             RETURNING id",
            &[&first, &last],
        )
        .await
        .expect("alert")
        .get(0);
    client
        .execute(
            "UPDATE analysis_jobs SET state = 'done', updated_at = now() - interval '2 hours'
             WHERE frame_id IN (SELECT id FROM frames WHERE sensor_id = 'mic-1')",
            &[],
        )
        .await
        .expect("done jobs");

    let policy = RetentionPolicy {
        kept_margin: Duration::from_secs(2),
        ..RetentionPolicy::default()
    };
    // Ten days on, today's partition is past the week of raw audio.
    let later = start + DAY * 10;
    let PassOutcome::Ran(report) = auscult_store::run_pass(&mut client, &policy, later, "test")
        .await
        .expect("pass")
    else {
        panic!("no other pass runs");
    };
    assert!(
        report
            .partitions_dropped
            .iter()
            .any(|p| p.table == "frames" && p.bytes > 0),
        "{report:?}"
    );
    assert!(
        !report.partitions_created.is_empty(),
        "partitions ahead of the new present"
    );
    assert_eq!(count(&client, "SELECT count(*) FROM frames").await, 0);
    // Kept: mic-1 seconds 8..=12 around the anomaly, mic-2 seconds 10..=16 around the alert.
    let kept: Vec<(String, i64)> = client
        .query(
            "SELECT sensor_id, seq FROM frames_kept ORDER BY sensor_id, seq",
            &[],
        )
        .await
        .expect("kept")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected: Vec<(String, i64)> = (8..=12)
        .map(|s| ("mic-1".to_string(), s))
        .chain((10..=16).map(|s| ("mic-2".to_string(), s)))
        .collect();
    assert_eq!(kept, expected);
    assert_eq!(report.frames_kept, 12);
    // Jobs and queued search documents of dropped frames are gone; verdicts and the alert stay.
    assert_eq!(
        count(&client, "SELECT count(*) FROM analysis_jobs").await,
        0
    );
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM search_outbox WHERE kind = 'frame'"
        )
        .await,
        0
    );
    assert_eq!(report.done_jobs_pruned + report.orphans_pruned, 120);
    assert_eq!(
        count(&client, "SELECT count(*) FROM analysis_results").await,
        60
    );
    assert_eq!(count(&client, "SELECT count(*) FROM alerts").await, 1);
    // The streams' high-water marks left with the last of their frames.
    assert_eq!(report.stream_marks_pruned, 2);
    assert_eq!(
        count(&client, "SELECT count(*) FROM frame_streams").await,
        0
    );

    // An engineer can still listen to the alert.
    let audio = auscult_store::alert_audio(&client, alert_id, Duration::from_secs(2), 1_000)
        .await
        .expect("clip")
        .expect("alert exists");
    assert_eq!(
        audio.frames.iter().map(|f| f.seq).collect::<Vec<_>>(),
        (10..=16).collect::<Vec<_>>()
    );
    assert_eq!(audio.frames[0].audio.samples, mic2[10].samples.to_vec());

    let status = auscult_store::lifecycle_status(&client, later)
        .await
        .expect("status");
    assert_eq!(status.kept_audio.frames, 12);
    assert_eq!(status.last_pass_by.as_deref(), Some("test"));
    let frames_kind = &status.partitioned[0];
    assert_eq!(frames_kind.table, "frames");
    assert!(frames_kind.partitions.iter().all(|p| p.drops_at > later));
    assert!(status.next_drop().is_some());

    // A quarter later the kept audio has gone too, by bounded deletes.
    let PassOutcome::Ran(report) =
        auscult_store::run_pass(&mut client, &policy, start + DAY * 100, "test")
            .await
            .expect("pass")
    else {
        panic!("no other pass runs");
    };
    assert_eq!(report.kept_frames_pruned, 12);
    assert_eq!(count(&client, "SELECT count(*) FROM frames_kept").await, 0);
}

#[tokio::test]
async fn one_pass_runs_at_a_time_and_partitions_follow_the_configured_width() {
    let (pg, mut client) = migrated_with_devices().await;
    let holder = connect(&pg).await;
    holder
        .execute("SELECT pg_advisory_lock(1635087203, -1)", &[])
        .await
        .expect("hold the pass lock");
    let policy = RetentionPolicy {
        frame_partition: Duration::from_secs(6 * 3_600),
        partitions_ahead: DAY * 5,
        ..RetentionPolicy::default()
    };
    let now = SystemTime::now();
    assert_eq!(
        auscult_store::run_pass(&mut client, &policy, now, "second")
            .await
            .expect("pass"),
        PassOutcome::Busy
    );
    holder
        .execute("SELECT pg_advisory_unlock(1635087203, -1)", &[])
        .await
        .expect("release");
    let PassOutcome::Ran(report) = auscult_store::run_pass(&mut client, &policy, now, "second")
        .await
        .expect("pass")
    else {
        panic!("the lock is free");
    };
    // The daily partitions made at install reach three days ahead; beyond them, six-hour slices.
    assert!(!report.partitions_created.is_empty());
    let widths: Vec<f64> = client
        .query(
            "SELECT extract(epoch FROM upper_bound - lower_bound)::float8 FROM auscult_partitions
             WHERE parent = 'frames' AND lower_bound >= now() + interval '3 days' ORDER BY lower_bound",
            &[],
        )
        .await
        .expect("partitions")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!widths.is_empty());
    assert!(widths.iter().all(|w| *w == 6.0 * 3_600.0), "{widths:?}");
    // Covered without a gap up to five days ahead.
    let gaps = count(
        &client,
        "SELECT count(*) FROM (SELECT lower_bound, lag(upper_bound) OVER (ORDER BY lower_bound) AS previous
                               FROM auscult_partitions WHERE parent = 'frames') p
         WHERE previous IS NOT NULL AND previous <> lower_bound",
    )
    .await;
    assert_eq!(gaps, 0);
    let reaching = count(
        &client,
        "SELECT count(*) FROM auscult_partitions WHERE parent = 'frames' AND upper_bound >= now() + interval '5 days'",
    )
    .await;
    assert_eq!(reaching, 1);
    // A second pass has nothing to create.
    let PassOutcome::Ran(again) = auscult_store::run_pass(&mut client, &policy, now, "second")
        .await
        .expect("pass")
    else {
        panic!("the lock is free");
    };
    assert!(again.partitions_created.is_empty(), "{again:?}");
}
