//! The whole pipeline with the real binaries: `auscult simulate` → `auscult-ingest` → PostgreSQL →
//! `auscult-listener` → `auscult-analysis` → verdicts and alerts, through the failures a plant sees.

use std::{path::PathBuf, time::Duration};

use auscult_e2e::{
    AnalysisProcess, Stack, activate_shipped_model, scoring_progress, start_listener,
};
use auscult_testkit::{free_port, wait_for};

/// Waits until every job is settled (done or dead); returns the progress.
async fn settled(
    client: &tokio_postgres::Client,
    timeout: Duration,
) -> Option<(i64, i64, i64, i64)> {
    wait_for(timeout, || async {
        let depth = auscult_store::queue_depth(client).await.ok()?;
        (depth.open() == 0).then_some(())
    })
    .await?;
    Some(scoring_progress(client).await)
}

/// The jobs the listener named `instance` holds now (any of its claims), or `None` if the query failed.
async fn jobs_held_by(db: &tokio_postgres::Client, instance: &str) -> Option<Vec<i64>> {
    let rows = db
        .query(
            "SELECT frame_id FROM analysis_jobs WHERE state = 'running' AND lease_owner LIKE $1 || '#%'",
            &[&instance],
        )
        .await
        .ok()?;
    Some(rows.iter().map(|r| r.get(0)).collect())
}

/// Sends a signal (`STOP`, `CONT`) to a process.
fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name} {pid}");
}

/// Short leases and deadlines, so that a killed listener's jobs return within seconds.
const FAST_RECOVERY: [(&str, &str); 4] = [
    ("AUSCULT__JOBS__LEASE", "3s"),
    ("AUSCULT__ANALYSIS__DEADLINE", "2s"),
    ("AUSCULT__JOBS__RETRY_BACKOFF", "100ms"),
    ("AUSCULT__JOBS__BATCH", "32"),
];

#[tokio::test]
async fn every_frame_is_scored_once_though_a_listener_and_an_analysis_replica_die() {
    let stack = Stack::start(&[]).await;
    let mut db = stack.db().await;
    let version = activate_shipped_model(&mut db).await;
    let url = stack.postgres.url();
    let analysis_a = AnalysisProcess::start(&url).await;
    let mut analysis_b = AnalysisProcess::start(&url).await;
    let endpoints = vec![analysis_a.endpoint(), analysis_b.endpoint()];
    let mut listener_a = start_listener(&url, "listener-a", &endpoints, &FAST_RECOVERY);
    let _listener_b = start_listener(&url, "listener-b", &endpoints, &FAST_RECOVERY);

    stack.simulate_synthetic("gw-1", 20, 60).await;

    // Mid-run: one listener and one analysis replica die without warning.
    let started = wait_for(Duration::from_secs(60), || async {
        (scoring_progress(&db).await.0 >= 100).then_some(())
    })
    .await;
    assert!(
        started.is_some(),
        "scoring never started:\n{}",
        listener_a.log()
    );
    // Listener a is frozen first, so that the jobs it holds when it dies are known: once none of its
    // statements is still at work in PostgreSQL (a COMMIT sent just before the freeze), what it holds no
    // longer changes. A statement waiting for the frozen listener to read its results, or for a lock
    // (perhaps held by its own frozen transaction), cannot commit anything but a failed attempt, which
    // returns the job to the queue for another listener. If it holds nothing at that instant (between
    // batches), it runs until it holds jobs again.
    let held = {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            signal(listener_a.pid(), "STOP");
            let quiet = wait_for(Duration::from_secs(10), || async {
                let active: i64 = db
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity
                         WHERE application_name = 'auscult-listener listener-a' AND state = 'active'
                           AND coalesce(wait_event_type, '') NOT IN ('Client', 'Lock')",
                        &[],
                    )
                    .await
                    .ok()?
                    .get(0);
                (active == 0).then_some(())
            })
            .await;
            assert!(quiet.is_some(), "listener a's statements never finished");
            let held = jobs_held_by(&db, "listener-a").await.expect("held jobs");
            if !held.is_empty() {
                break held;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "listener a never held a job:\n{}",
                listener_a.log()
            );
            signal(listener_a.pid(), "CONT");
            // Run until it holds jobs again, then freeze it and look once more.
            let holding = wait_for(Duration::from_secs(30), || async {
                (!jobs_held_by(&db, "listener-a").await?.is_empty()).then_some(())
            })
            .await;
            assert!(
                holding.is_some(),
                "listener a claims no more jobs:\n{}",
                listener_a.log()
            );
        }
    };
    listener_a.kill().expect("kill listener a");
    analysis_b.process.kill().expect("kill analysis b");
    let halfway = scoring_progress(&db).await.0;
    assert!(
        halfway < 1200,
        "the faults came mid-run ({halfway} of 1200 done)"
    );
    let _listener_a = start_listener(&url, "listener-a", &endpoints, &FAST_RECOVERY);

    let (done, jobs, results, frames) = settled(&db, Duration::from_secs(180))
        .await
        .expect("every job settles");
    assert_eq!(jobs, 1200, "20 sensors × 60 frames stored");
    assert_eq!(done, 1200, "every job done, none dead");
    assert_eq!(results, 1200, "one verdict per frame, none doubled");
    assert_eq!(frames, 1200);
    // The jobs the dead listener held were taken over when their leases ran out: a second attempt each.
    let taken_over: i64 = db
        .query_one(
            "SELECT count(*) FROM analysis_jobs WHERE frame_id = ANY($1) AND state = 'done' AND attempts > 1",
            &[&held],
        )
        .await
        .expect("taken over")
        .get(0);
    assert_eq!(
        taken_over,
        held.len() as i64,
        "every job listener a held was taken over"
    );
    let versions: Vec<String> = db
        .query("SELECT DISTINCT model_version FROM analysis_results", &[])
        .await
        .expect("versions")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, vec![version], "every verdict names its model");
    let unjudged: i64 = db
        .query_one(
            "SELECT count(*) FROM analysis_results WHERE latency_from_storage_ms < 0 OR threshold <= 0",
            &[],
        )
        .await
        .expect("latencies")
        .get(0);
    assert_eq!(unjudged, 0);
}

#[tokio::test]
async fn terminated_listener_connections_lose_no_job() {
    let stack = Stack::start(&[]).await;
    let mut db = stack.db().await;
    activate_shipped_model(&mut db).await;
    let url = stack.postgres.url();
    let analysis = AnalysisProcess::start(&url).await;
    let listener = start_listener(&url, "listener", &[analysis.endpoint()], &FAST_RECOVERY);
    let connected = wait_for(Duration::from_secs(30), || async {
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'auscult-listener %'
                   OR query LIKE 'LISTEN%'",
                &[],
            )
            .await
            .ok()?
            .get(0);
        (n > 0).then_some(())
    })
    .await;
    assert!(
        connected.is_some(),
        "listener never connected:\n{}",
        listener.log()
    );

    // Frames arrive while every listener connection is cut, again and again.
    let terminator = {
        let url = url.clone();
        tokio::spawn(async move {
            let client = auscult_e2e::connect(&url).await;
            let mut cuts = 0_u32;
            for _ in 0..12 {
                cuts += client
                    .query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                         WHERE pid <> pg_backend_pid() AND datname = current_database()
                           AND (application_name LIKE 'auscult-listener %' OR query LIKE 'LISTEN%')",
                        &[],
                    )
                    .await
                    .map_or(0, |rows| rows.len() as u32);
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
            cuts
        })
    };
    stack.simulate_synthetic("gw-1", 5, 40).await;
    let cuts = terminator.await.expect("terminator");
    assert!(cuts >= 6, "connections were cut ({cuts})");

    let (done, jobs, results, _) = settled(&db, Duration::from_secs(120))
        .await
        .expect("every job settles");
    assert_eq!((done, jobs, results), (200, 200, 200), "{}", listener.log());
    assert!(
        listener.log().contains("notification connection lost"),
        "the LISTEN connection was cut and re-established"
    );
}

#[tokio::test]
async fn a_frame_analysis_always_fails_on_goes_dead_and_the_rest_flows() {
    let stack = Stack::start(&[]).await;
    let mut db = stack.db().await;
    activate_shipped_model(&mut db).await;
    let url = stack.postgres.url();
    let analysis = AnalysisProcess::start(&url).await;
    // Half-second frames: shorter than one analysis window, so analysis can never judge them.
    let token = stack.add_device("gw-short").await;
    let args = [
        "--sensors",
        "1",
        "--frames",
        "1",
        "--frame-seconds",
        "0.5",
        "--rate",
        "0",
    ];
    stack.simulate("gw-short", &token, &args).await;
    stack.simulate_synthetic("gw-1", 3, 10).await;
    let listener = start_listener(
        &url,
        "listener",
        &[analysis.endpoint()],
        &[
            ("AUSCULT__JOBS__MAX_ATTEMPTS", "3"),
            ("AUSCULT__JOBS__RETRY_BACKOFF", "50ms"),
        ],
    );
    let (done, jobs, results, _) = settled(&db, Duration::from_secs(60))
        .await
        .expect("every job settles");
    assert_eq!((done, jobs, results), (30, 31, 30), "{}", listener.log());
    let dead = db
        .query_one(
            "SELECT j.attempts, j.last_error FROM analysis_jobs j JOIN frames f ON f.id = j.frame_id
             WHERE j.state = 'dead' AND f.device_id = 'gw-short'",
            &[],
        )
        .await
        .expect("the short frame's job is dead");
    let (attempts, error): (i32, String) = (dead.get(0), dead.get(1));
    // No model will ever judge it: dead on its first attempt, not after max_attempts (3).
    assert_eq!(attempts, 1, "dead at once");
    assert!(error.contains("TOO_SHORT"), "reason kept: {error}");
}

#[tokio::test]
async fn an_analysis_outage_uses_up_no_attempt() {
    let stack = Stack::start(&[]).await;
    let mut db = stack.db().await;
    activate_shipped_model(&mut db).await;
    let url = stack.postgres.url();
    stack.simulate_synthetic("gw-1", 2, 5).await;
    // Nothing listens where analysis should be: every round fails, and no replica answers its health
    // check. One attempt allowed — without the outage rule every job would be dead after the first round.
    let port = free_port().expect("port");
    let listener = start_listener(
        &url,
        "listener",
        &[format!("http://127.0.0.1:{port}")],
        &[
            ("AUSCULT__JOBS__MAX_ATTEMPTS", "1"),
            ("AUSCULT__JOBS__RETRY_BACKOFF", "50ms"),
            ("AUSCULT__ANALYSIS__RETRIES", "0"),
        ],
    );
    let outages = wait_for(Duration::from_secs(60), || async {
        let row = db
            .query_one(
                "SELECT count(*) FILTER (WHERE outage_retries >= 2), count(*) FILTER (WHERE state = 'dead')
                 FROM analysis_jobs",
                &[],
            )
            .await
            .ok()?;
        let (retried, dead): (i64, i64) = (row.get(0), row.get(1));
        assert_eq!(dead, 0, "a job died of the outage:\n{}", listener.log());
        (retried == 10).then_some(())
    })
    .await;
    assert!(
        outages.is_some(),
        "the jobs were not retried through the outage:\n{}",
        listener.log()
    );

    // Analysis comes up where the listener looks for it: everything is scored, on its one attempt.
    let _analysis = AnalysisProcess::start_on(&url, port, &[], None).await;
    let (done, jobs, results, _) = settled(&db, Duration::from_secs(120))
        .await
        .expect("every job settles");
    assert_eq!((done, jobs, results), (10, 10, 10), "{}", listener.log());
    let attempts: Vec<i32> = db
        .query("SELECT attempts FROM analysis_jobs", &[])
        .await
        .expect("jobs")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(attempts.iter().all(|a| *a == 1), "{attempts:?}");
}

/// One sensor streaming a recording, registered as the machine it records.
async fn stream_recording(stack: &Stack, device: &str, file: &str) {
    let token = stack.add_device(device).await;
    stack
        .db()
        .await
        .execute(
            "INSERT INTO sensor_machines VALUES ($1, 'mic-0', 'valve', 'section_00')",
            &[&device],
        )
        .await
        .expect("register machine");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("data/recordings")
        .join(file);
    let path = path.display().to_string();
    let args = [
        "--sensors",
        "1",
        "--wav",
        &path,
        "--frames",
        "20",
        "--rate",
        "0",
    ];
    stack.simulate(device, &token, &args).await;
}

#[tokio::test]
async fn an_alert_fires_for_a_faulty_valve_and_not_for_a_normal_one() {
    let stack = Stack::start(&[]).await;
    let mut db = stack.db().await;
    activate_shipped_model(&mut db).await;
    let url = stack.postgres.url();
    let analysis = AnalysisProcess::start(&url).await;
    let (hook_url, mut hook_bodies) = webhook_receiver().await;
    // The listener starts first, so the frames are scored as they arrive.
    let listener = start_listener(
        &url,
        "listener",
        &[analysis.endpoint()],
        &[("AUSCULT__ALERTS__WEBHOOKS", hook_url.as_str())],
    );
    stream_recording(
        &stack,
        "gw-faulty",
        "section_00_source_test_anomaly_0028_pat_00.wav",
    )
    .await;
    stream_recording(
        &stack,
        "gw-normal",
        "section_00_source_test_normal_0033_pat_00.wav",
    )
    .await;
    let (done, jobs, _, _) = settled(&db, Duration::from_secs(60))
        .await
        .expect("settled");
    assert_eq!((done, jobs), (40, 40));

    let alerts = auscult_store::list_alerts(&db).await.expect("alerts");
    let devices: Vec<&str> = alerts.iter().map(|a| a.device_id.as_str()).collect();
    assert_eq!(devices, vec!["gw-faulty"], "{alerts:?}\n{}", listener.log());
    assert_eq!(alerts[0].machine, "valve/section_00");
    let judged_as_clip: i64 = db
        .query_one(
            "SELECT count(*) FROM analysis_results WHERE device_id = 'gw-faulty' AND history_windows = 9",
            &[],
        )
        .await
        .expect("history")
        .get(0);
    let delivered = tokio::time::timeout(Duration::from_secs(30), hook_bodies.recv())
        .await
        .expect("the webhook is called")
        .expect("a body");
    assert_eq!(delivered["event"], "fired");
    assert_eq!(delivered["device_id"], "gw-faulty");
    assert_eq!(
        delivered["idempotency_key"],
        format!("auscult-alert-{}-fired", alerts[0].id)
    );
    assert_eq!(
        judged_as_clip, 11,
        "from the tenth second on, every second is judged with the nine before it"
    );
    // Every clip verdict says which part set its score; shorter sound has no parts.
    let explained = db
        .query_one(
            "SELECT count(*) FILTER (WHERE clip),
                    count(*) FILTER (WHERE clip
                        AND abs((parts->>(parts->>'furthest'))::float8 - anomaly_score) < 1e-9),
                    count(*) FILTER (WHERE NOT clip AND parts IS NOT NULL)
             FROM analysis_results WHERE device_id = 'gw-faulty'",
            &[],
        )
        .await
        .expect("parts");
    let (clips, furthest_is_the_score, windows_with_parts): (i64, i64, i64) =
        (explained.get(0), explained.get(1), explained.get(2));
    assert!(clips >= judged_as_clip);
    assert_eq!(furthest_is_the_score, clips);
    assert_eq!(windows_with_parts, 0);
}

/// A webhook receiver: answers 200 to every POST and hands over each JSON body.
async fn webhook_receiver() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let (bodies, received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let bodies = bodies.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0_u8; 4096];
                // Read the head, then as many body bytes as Content-Length says.
                loop {
                    let Ok(n) = socket.read(&mut buffer).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buffer[..n]);
                    let text = String::from_utf8_lossy(&request).to_string();
                    let Some(head_end) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    let length = text[..head_end]
                        .lines()
                        .find_map(|l| {
                            let (name, value) = l.split_once(':')?;
                            name.eq_ignore_ascii_case("content-length")
                                .then(|| value.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if request.len() >= head_end + 4 + length {
                        let body = &request[head_end + 4..head_end + 4 + length];
                        if let Ok(json) = serde_json::from_slice(body) {
                            let _ = bodies.send(json);
                        }
                        let _ = socket
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                            .await;
                        return;
                    }
                }
            });
        }
    });
    (url, received)
}
