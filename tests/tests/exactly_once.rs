//! Every frame arrives exactly once: through the real `auscult simulate` and `auscult-ingest` binaries, with and
//! without connection cuts, and across an ingest process killed with SIGKILL.

use std::{collections::HashSet, time::Duration};

use auscult_e2e::{Stack, stored_frames};
use auscult_gateway::{Event, Gateway, GatewayConfig, Identity, SyntheticSource};
use sha2::{Digest, Sha256};

/// These gateways send as fast as ingest takes frames, to find races in storing them: one device's fair
/// share of a replica (its pace, tested in `fairness.rs`) is lifted.
const FULL_SPEED: &[(&str, &str)] = &[
    ("AUSCULT__DEVICES__MAX_FRAMES_PER_SECOND", "0"),
    ("AUSCULT__DEVICES__MAX_BYTES_PER_SECOND", "0"),
];

/// What the simulator sends for `sensors` × `frames` with seed 1, as (sensor_id, seq, sha256).
fn expected(device: &str, sensors: usize, frames: u64) -> Vec<(String, i64, Vec<u8>)> {
    let identity = Identity {
        device_id: device.into(),
        sensors: (0..sensors).map(|i| format!("mic-{i}")).collect(),
        stream_epoch: 1,
    };
    let source = SyntheticSource::new(identity, frames, 1);
    let mut out: Vec<_> = (0..sensors)
        .flat_map(|s| (0..frames).map(move |q| (s, q)))
        .map(|(s, q)| {
            (
                format!("mic-{s}"),
                i64::try_from(q).expect("seq"),
                Sha256::digest(source.samples(s, q)).to_vec(),
            )
        })
        .collect();
    out.sort();
    out
}

/// 20 sensors × 500 frames as fast as ingest takes them, plus `extra` flags.
async fn simulate(stack: &Stack, device: &str, token: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "--sensors",
        "20",
        "--frames",
        "500",
        "--rate",
        "0",
        "--epoch",
        "1",
    ];
    args.extend_from_slice(extra);
    stack.simulate(device, token, &args).await
}

#[tokio::test]
async fn ten_thousand_frames_from_twenty_sensors_arrive_exactly_once() {
    let stack = Stack::start(FULL_SPEED).await;
    let token = stack.add_device("gw-a").await;
    let summary = simulate(&stack, "gw-a", &token, &[]).await;
    assert_eq!(summary["sent"], 10_000);
    assert_eq!(summary["acked"], 10_000);
    assert_eq!(summary["rejected"], 0);
    assert!(summary["frames_per_s"].as_f64().expect("number") > 0.0);
    let db = stack.db().await;
    assert_eq!(stored_frames(&db, "gw-a").await, expected("gw-a", 20, 500));
    // Stored compressed (losslessly: `stored_frames` checked every frame's audio against its digest).
    let row = db
        .query_one(
            "SELECT count(*) FILTER (WHERE encoding = 'flac'), sum(length(samples))::int8,
                    sum(auscult_sample_frames(encoding, samples, channels) * 2 * channels)::int8
             FROM frames WHERE device_id = 'gw-a'",
            &[],
        )
        .await
        .expect("sizes");
    let (flac, stored_bytes, received_bytes): (i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2));
    assert_eq!(flac, 10_000);
    assert!(
        stored_bytes < received_bytes,
        "{stored_bytes} stored for {received_bytes} received"
    );
    let jobs: i64 = db
        .query_one("SELECT count(*) FROM analysis_jobs", &[])
        .await
        .expect("jobs")
        .get(0);
    assert_eq!(jobs, 10_000, "one analysis job per stored frame");
}

#[tokio::test]
async fn cutting_the_connection_every_500_frames_loses_and_doubles_nothing() {
    let stack = Stack::start(FULL_SPEED).await;
    let token = stack.add_device("gw-b").await;
    let summary = simulate(&stack, "gw-b", &token, &["--cut-every", "500"]).await;
    assert_eq!(summary["acked"], 10_000);
    assert!(
        summary["reconnects"].as_u64().expect("number") >= 19,
        "{summary}"
    );
    assert!(
        summary["resent"].as_u64().expect("number") > 0,
        "cuts should leave frames to resend: {summary}"
    );
    let db = stack.db().await;
    assert_eq!(stored_frames(&db, "gw-b").await, expected("gw-b", 20, 500));
}

#[tokio::test]
async fn frames_acknowledged_before_a_sigkill_are_stored() {
    let mut stack = Stack::start(FULL_SPEED).await;
    let token = stack.add_device("gw-k").await;
    let (run, mut events) = spawn_gateway(&stack, "gw-k", token, 10);

    // Collect acknowledgements until a good share of the run is durable, then kill ingest mid-stream.
    let mut acked: HashSet<(String, u64)> = HashSet::new();
    while acked.len() < 1_500 {
        match next_event(&mut events).await {
            Event::Acked(ranges) => {
                record(&mut acked, ranges);
            }
            Event::Disconnected(reason) => panic!("disconnected before the kill: {reason}"),
            _ => {}
        }
    }
    stack.ingest.kill().expect("kill ingest");
    // Acknowledgements already on the wire may still arrive; the stream breaks after them.
    loop {
        match next_event(&mut events).await {
            Event::Acked(ranges) => {
                record(&mut acked, ranges);
            }
            Event::Disconnected(_) => break,
            _ => {}
        }
    }
    let db = stack.db().await;
    let stored = stored_keys(&db, "gw-k").await;
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged frames missing after SIGKILL, e.g. {:?}",
        lost.len(),
        lost.first()
    );
    assert!(
        stored.len() < 5_000,
        "the kill should have happened mid-stream"
    );

    // Restarted, ingest takes the resends, and the run completes exactly once.
    stack.restart_ingest().await;
    let summary = run.await.expect("join").expect("gateway run");
    assert_eq!(summary.acked, 5_000);
    let all = stored_frames(&db, "gw-k").await;
    assert_eq!(all.len(), 5_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_commits_and_acknowledges_in_flight_frames_before_exiting() {
    let mut stack = Stack::start(FULL_SPEED).await;
    let token = stack.add_device("gw-t").await;
    let (run, mut events) = spawn_gateway(&stack, "gw-t", token, 4);

    let mut acked: HashSet<(String, u64)> = HashSet::new();
    let mut terminated = None;
    let reason = loop {
        match next_event(&mut events).await {
            Event::Acked(ranges) => {
                record(&mut acked, ranges);
                if terminated.is_none() && acked.len() >= 500 {
                    terminated = Some(tokio::task::block_in_place(|| {
                        stack
                            .ingest
                            .terminate(Duration::from_secs(30))
                            .expect("sigterm")
                    }));
                }
            }
            Event::Disconnected(reason) => break reason,
            _ => {}
        }
    };
    let status = terminated
        .flatten()
        .expect("ingest exited within its grace period");
    assert!(
        status.success(),
        "graceful shutdown exits cleanly: {status:?}\n{}",
        stack.ingest.log()
    );
    assert!(
        reason.contains("Unavailable") && reason.contains("shutting down"),
        "{reason}"
    );

    let db = stack.db().await;
    let stored = stored_keys(&db, "gw-t").await;
    assert!(
        acked.is_subset(&stored),
        "acknowledged frames missing after shutdown"
    );
    assert_eq!(
        stored.len(),
        acked.len(),
        "everything committed was acknowledged before the stream closed"
    );

    stack.restart_ingest().await;
    let summary = run.await.expect("join").expect("gateway run");
    assert_eq!(summary.acked, 2_000);
    assert_eq!(stored_frames(&db, "gw-t").await.len(), 2_000);
}

/// Adds acknowledged ranges to the set of acknowledged (sensor, seq).
fn record(acked: &mut HashSet<(String, u64)>, ranges: Vec<auscult_proto::ingest::v1::FrameRange>) {
    for r in ranges {
        acked.extend((r.first_seq..=r.last_seq).map(|q| (r.sensor_id.clone(), q)));
    }
}

/// A gateway streaming 500 synthetic frames from each of `sensors` sensors, with a window of 256, reporting
/// its events.
fn spawn_gateway(
    stack: &Stack,
    device: &str,
    token: String,
    sensors: usize,
) -> (
    tokio::task::JoinHandle<Result<auscult_gateway::Summary, auscult_gateway::GatewayError>>,
    tokio::sync::mpsc::UnboundedReceiver<Event>,
) {
    let identity = Identity {
        device_id: device.into(),
        sensors: (0..sensors).map(|i| format!("mic-{i}")).collect(),
        stream_epoch: 1,
    };
    let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
    let mut config = GatewayConfig::new(stack.endpoint(), token);
    config.window = 256;
    let gateway = Gateway::new(config).with_events(events_tx);
    let source = SyntheticSource::new(identity, 500, 1);
    (
        tokio::spawn(async move { gateway.run(source).await }),
        events,
    )
}

/// The (sensor, seq) of every stored frame of `device`.
async fn stored_keys(db: &tokio_postgres::Client, device: &str) -> HashSet<(String, u64)> {
    stored_frames(db, device)
        .await
        .into_iter()
        .map(|(s, q, _)| (s, u64::try_from(q).expect("seq")))
        .collect()
}

/// The gateway's next event; a gateway that goes quiet for 60 s fails the test instead of hanging it.
async fn next_event(events: &mut tokio::sync::mpsc::UnboundedReceiver<Event>) -> Event {
    tokio::time::timeout(Duration::from_secs(60), events.recv())
        .await
        .expect("a gateway event within 60 s")
        .expect("gateway events")
}
