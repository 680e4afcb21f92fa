//! Bad input against the real ingest binary: each validation rule rejects its frame with its reason while the
//! frames around it are stored; bad tokens, other devices' frames and oversized messages end the stream with
//! the right status.

use std::time::{Duration, SystemTime};

use auscult_e2e::Stack;
use auscult_proto::ingest::v1::{self as pb, ingest_client::IngestClient};
use bytes::Bytes;
use tokio_stream::StreamExt;
use tonic::{Code, Request, metadata::MetadataValue};

/// Breaks one rule of a good frame.
type Spoiler = Box<dyn Fn(&mut pb::Frame)>;

fn good(device: &str, seq: u64) -> pb::Frame {
    auscult_e2e::pcm16_frame(device, "mic-0", seq, &auscult_e2e::one_second_pcm16())
}

/// Makes `frame` 1,000 f32le samples of 0.1, sample `index` set to `value`.
fn f32_samples_with(frame: &mut pb::Frame, index: usize, value: f32) {
    let mut floats = [0.1f32; 1000];
    floats[index] = value;
    frame.encoding = pb::SampleEncoding::F32le.into();
    frame.samples = Bytes::from(auscult_frame::encode_f32le(&floats));
}

fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    let value: MetadataValue<_> = format!("Bearer {token}").parse().expect("ascii token");
    request.metadata_mut().insert("authorization", value);
    request
}

/// Sends `frames` on one stream, closes it, and returns every ack and the final status.
async fn exchange(
    stack: &Stack,
    token: &str,
    frames: Vec<pb::Frame>,
) -> (Vec<pb::Ack>, Result<(), tonic::Status>) {
    let mut client = IngestClient::connect(stack.endpoint())
        .await
        .expect("connect");
    let response = client
        .stream_frames(with_token(tokio_stream::iter(frames), token))
        .await;
    let mut acks = Vec::new();
    let mut stream = match response {
        Ok(response) => response.into_inner(),
        Err(status) => return (acks, Err(status)),
    };
    while let Some(message) = stream.next().await {
        match message {
            Ok(ack) => acks.push(ack),
            Err(status) => return (acks, Err(status)),
        }
    }
    (acks, Ok(()))
}

#[tokio::test]
async fn each_rule_rejects_its_frame_and_keeps_the_neighbours() {
    let stack = Stack::start(&[]).await;
    let token = stack.add_device("gw-v").await;
    let now = SystemTime::now();
    let bad: Vec<(pb::RejectReason, Spoiler)> = vec![
        (
            pb::RejectReason::InvalidSensorId,
            Box::new(|f| f.sensor_id.clear()),
        ),
        (
            // PostgreSQL cannot store a NUL in text: refused here, never sent to the database.
            pb::RejectReason::InvalidSensorId,
            Box::new(|f| f.sensor_id = "mic\0".into()),
        ),
        (
            pb::RejectReason::SequenceOutOfRange,
            Box::new(|f| f.stream_epoch = u64::MAX),
        ),
        (
            pb::RejectReason::MissingCaptureTime,
            Box::new(|f| f.captured_at = None),
        ),
        (
            pb::RejectReason::CaptureTimeInFuture,
            Box::new(move |f| {
                f.captured_at = Some(auscult_proto::system_time_to_timestamp(
                    now + Duration::from_secs(3_600),
                ));
            }),
        ),
        (
            pb::RejectReason::CaptureTimeTooOld,
            Box::new(move |f| {
                f.captured_at = Some(auscult_proto::system_time_to_timestamp(
                    now - Duration::from_secs(30 * 86_400),
                ));
            }),
        ),
        (
            pb::RejectReason::SampleRateOutOfRange,
            Box::new(|f| f.sample_rate_hz = 500),
        ),
        (
            pb::RejectReason::ChannelsOutOfRange,
            Box::new(|f| f.channels = 17),
        ),
        (
            pb::RejectReason::UnsupportedEncoding,
            Box::new(|f| f.encoding = 0),
        ),
        (
            pb::RejectReason::PayloadLengthMismatch,
            Box::new(|f| f.samples = f.samples.slice(..31_999)),
        ),
        (
            pb::RejectReason::NonFiniteSample,
            Box::new(|f| f32_samples_with(f, 400, f32::NAN)),
        ),
        (
            // Finite, but its square summed over a spectrogram window would not be.
            pb::RejectReason::SampleOutOfRange,
            Box::new(|f| f32_samples_with(f, 400, 3.0e38)),
        ),
    ];
    // good, bad, good, bad, …, good: every bad frame between two good ones.
    let mut frames = vec![good("gw-v", 0)];
    let mut seq = 1;
    for (_, spoil) in &bad {
        let mut frame = good("gw-v", seq);
        spoil(&mut frame);
        frames.push(frame);
        frames.push(good("gw-v", seq + 1));
        seq += 2;
    }
    let (acks, end) = exchange(&stack, &token, frames).await;
    end.expect("the stream ends normally despite rejections");

    let rejected: Vec<pb::Rejection> = acks.iter().flat_map(|a| a.rejected.clone()).collect();
    assert_eq!(rejected.len(), bad.len());
    for (i, (reason, _)) in bad.iter().enumerate() {
        let expected_seq = 1 + 2 * i as u64;
        // Two rules share a reason (an empty sensor id and one with a NUL): match by sequence too.
        let rejection = rejected
            .iter()
            .find(|r| {
                r.reason == i32::from(*reason)
                    && (r.seq == expected_seq || *reason == pb::RejectReason::SequenceOutOfRange)
            })
            .unwrap_or_else(|| panic!("no rejection with reason {reason:?}"));
        if *reason != pb::RejectReason::SequenceOutOfRange {
            assert_eq!(rejection.seq, expected_seq, "{reason:?}");
        }
        assert!(!rejection.detail.is_empty());
    }
    let durable: u64 = acks
        .iter()
        .flat_map(|a| &a.durable)
        .map(|r| r.last_seq - r.first_seq + 1)
        .sum();
    assert_eq!(durable, bad.len() as u64 + 1);

    let db = stack.db().await;
    let stored: Vec<i64> = db
        .query(
            "SELECT seq FROM frames WHERE device_id = 'gw-v' ORDER BY seq",
            &[],
        )
        .await
        .expect("query")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let expected: Vec<i64> = (0..=bad.len() as i64).map(|i| 2 * i).collect();
    assert_eq!(stored, expected, "exactly the good frames are stored");

    let metrics = stack.metrics();
    assert!(
        metrics.contains("auscult_ingest_frames_rejected_total{reason=\"non_finite_sample\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "auscult_ingest_frames_stored_total {}",
            bad.len() + 1
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("auscult_ingest_frames_rejected_total{reason=\"sample_out_of_range\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn unknown_tokens_and_other_devices_are_refused() {
    let stack = Stack::start(&[]).await;
    let token_a = stack.add_device("gw-a").await;
    let _token_b = stack.add_device("gw-b").await;

    let (_, end) = exchange(&stack, "auscult_0000", vec![good("gw-a", 0)]).await;
    assert_eq!(
        end.expect_err("unknown token").code(),
        Code::Unauthenticated
    );

    let mut client = IngestClient::connect(stack.endpoint())
        .await
        .expect("connect");
    let status = client
        .stream_frames(Request::new(tokio_stream::iter(vec![good("gw-a", 0)])))
        .await
        .expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated);

    let (acks, end) = exchange(&stack, &token_a, vec![good("gw-a", 0), good("gw-b", 0)]).await;
    assert_eq!(
        end.expect_err("another device's frame").code(),
        Code::PermissionDenied
    );
    let durable: Vec<u64> = acks
        .iter()
        .flat_map(|a| &a.durable)
        .map(|r| r.first_seq)
        .collect();
    assert_eq!(
        durable,
        vec![0],
        "the frame before the refused one is still acknowledged"
    );

    let db = stack.db().await;
    let per_device: Vec<(String, i64)> = db
        .query(
            "SELECT device_id, count(*) FROM frames GROUP BY device_id",
            &[],
        )
        .await
        .expect("query")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(per_device, vec![("gw-a".to_owned(), 1)]);
}

#[tokio::test]
async fn a_message_over_the_size_limit_is_refused() {
    let stack = Stack::start(&[("AUSCULT__LIMITS__MAX_MESSAGE_BYTES", "65536")]).await;
    let token = stack.add_device("gw-s").await;
    let mut big = good("gw-s", 1);
    big.samples = Bytes::from(vec![0u8; 100_000]);
    let (_, end) = exchange(&stack, &token, vec![good("gw-s", 0), big]).await;
    let status = end.expect_err("oversized message");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        stack
            .metrics()
            .contains("auscult_ingest_frames_rejected_total{reason=\"message_too_large\"} 1")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_frame_from_one_device_leaves_another_devices_stream_alone() {
    let stack = Stack::start(&[]).await;
    let token_bad = stack.add_device("gw-buggy").await;
    let token_good = stack.add_device("gw-steady").await;

    // The steady device streams throughout, paced like a real gateway.
    let mut config = auscult_gateway::GatewayConfig::new(stack.endpoint(), token_good);
    config.rate = Some(200.0);
    let identity = auscult_gateway::Identity {
        device_id: "gw-steady".into(),
        sensors: vec!["mic-0".into(), "mic-1".into()],
        stream_epoch: 1,
    };
    let gateway = auscult_gateway::Gateway::new(config);
    let steady = tokio::spawn(async move {
        gateway
            .run(auscult_gateway::SyntheticSource::new(identity, 300, 9))
            .await
    });

    // Meanwhile the buggy one sends NUL in a sensor id and a sample no spectrogram can hold, between
    // good frames, several times over.
    for round in 0..5u64 {
        let mut frames = Vec::new();
        for i in 0..4 {
            let seq = round * 4 + i;
            let mut frame = good("gw-buggy", seq);
            match i {
                1 => frame.sensor_id = "mic\0".into(),
                2 => f32_samples_with(&mut frame, 0, -2.0e9),
                _ => {}
            }
            frames.push(frame);
        }
        let (acks, end) = exchange(&stack, &token_bad, frames).await;
        end.expect("the buggy device's stream ends normally");
        let rejected: usize = acks.iter().map(|a| a.rejected.len()).sum();
        assert_eq!(rejected, 2, "round {round}");
    }

    let summary = tokio::time::timeout(Duration::from_secs(60), steady)
        .await
        .expect("the steady device finished")
        .expect("join")
        .expect("the steady device's frames were stored");
    assert_eq!(summary.acked, 600);
    assert_eq!(
        summary.reconnects, 0,
        "the steady device's stream was reset"
    );
    let db = stack.db().await;
    let count = |device: &'static str| {
        let db = &db;
        async move {
            db.query_one(
                "SELECT count(*) FROM frames WHERE device_id = $1",
                &[&device],
            )
            .await
            .expect("count")
            .get::<_, i64>(0)
        }
    };
    assert_eq!(count("gw-steady").await, 600);
    assert_eq!(count("gw-buggy").await, 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frame_the_database_refuses_fails_alone_and_its_batch_is_stored() {
    // A rule the database has and validation does not (as a NUL in text once was): one frame of one
    // device breaks it.
    let stack = Stack::start(&[]).await;
    stack
        .db()
        .await
        .batch_execute(
            "ALTER TABLE frames ADD CONSTRAINT refuses_one_frame
                 CHECK (device_id <> 'gw-odd' OR sensor_id <> 'mic-1' OR seq <> 13)",
        )
        .await
        .expect("constraint");
    let token_odd = stack.add_device("gw-odd").await;
    let token_steady = stack.add_device("gw-even").await;
    let run = |device: &'static str, token: String, seed: u64| {
        let mut config = auscult_gateway::GatewayConfig::new(stack.endpoint(), token);
        config.rate = Some(400.0);
        let identity = auscult_gateway::Identity {
            device_id: device.into(),
            sensors: vec!["mic-0".into(), "mic-1".into()],
            stream_epoch: 1,
        };
        let gateway = auscult_gateway::Gateway::new(config);
        tokio::spawn(async move {
            gateway
                .run(auscult_gateway::SyntheticSource::new(identity, 100, seed))
                .await
        })
    };
    // Both stream at once, so their frames share batches.
    let (odd, steady) = (run("gw-odd", token_odd, 1), run("gw-even", token_steady, 2));
    let finish = |task: tokio::task::JoinHandle<
        Result<auscult_gateway::Summary, auscult_gateway::GatewayError>,
    >| async move {
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("finished in time")
            .expect("join")
            .expect("gateway run")
    };
    let (odd, steady): (auscult_gateway::Summary, auscult_gateway::Summary) =
        (finish(odd).await, finish(steady).await);

    assert_eq!(
        (steady.acked, steady.rejected, steady.reconnects),
        (200, 0, 0)
    );
    assert_eq!((odd.acked, odd.rejected, odd.reconnects), (199, 1, 0));
    let db = stack.db().await;
    let stored: i64 = db
        .query_one("SELECT count(*) FROM frames", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(stored, 399);
    let metrics = stack.metrics();
    assert!(
        metrics.contains("auscult_ingest_frames_rejected_total{reason=\"storage_refused\"} 1"),
        "{metrics}"
    );
}
