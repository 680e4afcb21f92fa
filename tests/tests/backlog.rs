//! A backlog is judged as live streams are: thousands of frames waiting when two listeners (default settings,
//! several batches each at once) and two analysis replicas start must each be judged with the same history
//! of its stream as if it had been scored the moment it arrived.

use std::time::Duration;

use auscult_e2e::{
    AnalysisProcess, Stack, activate_shipped_model, fetch_metrics, metric, start_listener,
};
use auscult_testkit::{free_port, wait_for};

const SENSORS: u32 = 20;
const FRAMES_PER_SENSOR: u32 = 100;

#[tokio::test]
async fn a_backlog_worked_by_two_listeners_is_judged_as_if_live() {
    let stack = Stack::start(&[]).await;
    let mut db = stack.db().await;
    activate_shipped_model(&mut db).await;
    let url = stack.postgres.url();

    // The backlog: every frame stored before any listener runs.
    stack
        .simulate_synthetic("gw-backlog", SENSORS, FRAMES_PER_SENSOR)
        .await;
    let total = i64::from(SENSORS * FRAMES_PER_SENSOR);
    let queued: i64 = db
        .query_one(
            "SELECT count(*) FROM analysis_jobs WHERE state = 'queued'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(queued, total);

    let analysis_a = AnalysisProcess::start(&url).await;
    let analysis_b = AnalysisProcess::start(&url).await;
    let endpoints = vec![analysis_a.endpoint(), analysis_b.endpoint()];
    let admin_ports = [free_port().expect("port"), free_port().expect("port")];
    let admin_addrs: Vec<String> = admin_ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let listeners: Vec<_> = ["listener-a", "listener-b"]
        .iter()
        .zip(&admin_addrs)
        .map(|(name, admin)| {
            start_listener(
                &url,
                name,
                &endpoints,
                &[("AUSCULT__ADMIN_ADDR", admin.as_str())],
            )
        })
        .collect();

    let started = std::time::Instant::now();
    let drained = wait_for(Duration::from_secs(240), || async {
        let depth = auscult_store::queue_depth(&db).await.ok()?;
        (depth.open() == 0).then_some(depth)
    })
    .await;
    let logs = || {
        listeners
            .iter()
            .map(|l| l.log())
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    let depth = drained.unwrap_or_else(|| panic!("the backlog never drained:\n{}", logs()));
    assert_eq!(depth.dead, 0, "{}", logs());
    let elapsed = started.elapsed().as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let rate = total as f64 / elapsed;
    println!("backlog of {total} frames drained in {elapsed:.1} s ({rate:.0} frames/s)");

    // Both listeners worked the backlog.
    for port in admin_ports {
        let claimed = metric(&fetch_metrics(port), "auscult_listener_jobs_claimed_total");
        assert!(
            claimed.is_some_and(|n| n > 0.0),
            "a listener claimed nothing: {claimed:?}"
        );
    }

    let results: i64 = db
        .query_one("SELECT count(DISTINCT frame_id) FROM analysis_results", &[])
        .await
        .expect("results")
        .get(0);
    assert_eq!(results, total, "every frame judged once");

    // Each verdict was judged with every window of the frames before it in its stream, as far back as
    // the listener's history reaches (nine frames by default) — exactly what a live stream gets.
    let misjudged = db
        .query(
            "SELECT r.sensor_id, r.seq, r.history_windows,
                    (SELECT coalesce(sum(p.summary_windows), 0) FROM analysis_results p
                     WHERE p.device_id = r.device_id AND p.sensor_id = r.sensor_id
                       AND p.stream_epoch = r.stream_epoch AND p.model_version = r.model_version
                       AND p.seq >= r.seq - 9 AND p.seq < r.seq)::int4 AS live
             FROM analysis_results r
             ORDER BY r.sensor_id, r.seq",
            &[],
        )
        .await
        .expect("history");
    let wrong: Vec<(String, i64, i32, i32)> = misjudged
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
        .filter(|(_, _, judged, live)| judged != live)
        .collect();
    let retried: Vec<(i64, i32, Option<String>)> = db
        .query(
            "SELECT frame_id, attempts, last_error FROM analysis_jobs WHERE attempts > 1",
            &[],
        )
        .await
        .expect("retried")
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {total} frames judged with less history than live (sensor, seq, windows, live): {:?}; \
         jobs attempted more than once: {retried:?}\n{}",
        wrong.len(),
        &wrong[..wrong.len().min(10)],
        logs()
    );
    let as_clips: i64 = db
        .query_one("SELECT count(*) FROM analysis_results WHERE clip", &[])
        .await
        .expect("clips")
        .get(0);
    assert!(
        as_clips >= i64::from(SENSORS * (FRAMES_PER_SENSOR - 10)),
        "only {as_clips} frames judged as clips"
    );
}
