//! Fair sharing against the real ingest binary: a device flooding ingest (more streams than it may open, as
//! fast as the transport takes frames, some of its streams never reading their acknowledgements) slows only
//! itself; a second device's acknowledgement latency stays within a stated factor of its unloaded value. The
//! connection cap closes connections beyond it on arrival; a revoked token ends the streams it opened.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use auscult_e2e::{Stack, metric, one_second_pcm16 as samples, pcm16_frame as frame};
use auscult_proto::ingest::v1::{self as pb, ingest_client::IngestClient};
use tokio::sync::mpsc;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Status, Streaming, metadata::MetadataValue};

/// How much slower the calm device's acknowledgements may be while another device floods: its p99 under
/// the flood is at most this many times its p99 alone.
const LATENCY_FACTOR: f64 = 3.0;

/// The flooding device's caps in these tests.
const FLOOD_STREAMS: u32 = 4;
const FLOOD_FRAMES_PER_SECOND: u32 = 100;

/// Opens a stream fed from the returned sender.
async fn open(
    stack: &Stack,
    token: &str,
) -> Result<(mpsc::Sender<pb::Frame>, Streaming<pb::Ack>), Status> {
    let mut client = IngestClient::connect(stack.endpoint())
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let (tx, rx) = mpsc::channel(64);
    let mut request = Request::new(ReceiverStream::new(rx));
    let value: MetadataValue<_> = format!("Bearer {token}").parse().expect("ascii token");
    request.metadata_mut().insert("authorization", value);
    let acks = client.stream_frames(request).await?.into_inner();
    Ok((tx, acks))
}

/// Sends `n` frames one at a time, 50 ms apart, each once the previous one is acknowledged as stored, and
/// returns each frame's time from send to acknowledgement.
async fn ack_latencies(
    tx: &mpsc::Sender<pb::Frame>,
    acks: &mut Streaming<pb::Ack>,
    first_seq: u64,
    n: u64,
) -> Vec<Duration> {
    let samples = samples();
    let mut pace = tokio::time::interval(Duration::from_millis(50));
    let mut latencies = Vec::new();
    for seq in first_seq..first_seq + n {
        pace.tick().await;
        let sent = Instant::now();
        tx.send(frame("calm", "mic-0", seq, &samples))
            .await
            .expect("the calm device's stream stays open");
        let ack = tokio::time::timeout(Duration::from_secs(30), acks.next())
            .await
            .expect("an acknowledgement within 30 s")
            .expect("the calm device's stream is not ended")
            .expect("the calm device's stream is not reset");
        assert!(
            ack.rejected.is_empty()
                && ack
                    .durable
                    .iter()
                    .any(|r| r.first_seq <= seq && seq <= r.last_seq),
            "frame {seq} of the calm device not stored: {ack:?}"
        );
        latencies.push(sent.elapsed());
    }
    latencies
}

fn percentile(latencies: &[Duration], p: f64) -> f64 {
    let mut ms: Vec<f64> = latencies.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let rank = ((p * ms.len() as f64).ceil() as usize).clamp(1, ms.len());
    ms[rank - 1]
}

/// A flooding stream: sends frames as fast as the transport takes them until `stop`, and reads its
/// acknowledgements either at once or one every 500 ms.
fn flood(
    mut tx_acks: (mpsc::Sender<pb::Frame>, Streaming<pb::Ack>),
    sensor: String,
    slow_reader: bool,
    stop: CancellationToken,
    sent: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (tx, acks) = (tx_acks.0, &mut tx_acks.1);
        let samples = samples();
        let sender = {
            let stop = stop.clone();
            async move {
                for seq in 0.. {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        sent_ok = tx.send(frame("flood", &sensor, seq, &samples)) => {
                            if sent_ok.is_err() {
                                break;
                            }
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                // Dropping the sender ends the stream's request side.
            }
        };
        let reader = async {
            loop {
                if slow_reader {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    ack = acks.next() => if !matches!(ack, Some(Ok(_))) { break },
                }
            }
        };
        tokio::join!(sender, reader);
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flooding_device_slows_only_itself() {
    let streams = FLOOD_STREAMS.to_string();
    let rate = FLOOD_FRAMES_PER_SECOND.to_string();
    let stack = Stack::start(&[
        ("AUSCULT__DEVICES__MAX_STREAMS", &streams),
        ("AUSCULT__DEVICES__MAX_FRAMES_PER_SECOND", &rate),
        ("AUSCULT__DEVICES__BURST", "1s"),
    ])
    .await;
    let calm_token = stack.add_device("calm").await;
    let flood_token = stack.add_device("flood").await;

    let (calm_tx, mut calm_acks) = open(&stack, &calm_token).await.expect("calm stream");
    // Warm-up: connections, prepared statements, the first partition's pages.
    ack_latencies(&calm_tx, &mut calm_acks, 0, 20).await;
    let alone = ack_latencies(&calm_tx, &mut calm_acks, 20, 100).await;

    // The flood: as many streams as it may open, and two more, which are refused.
    let stop = CancellationToken::new();
    let sent = Arc::new(AtomicU64::new(0));
    let flood_started = Instant::now();
    let mut flooders = Vec::new();
    let mut refused = Vec::new();
    for i in 0..FLOOD_STREAMS + 2 {
        match open(&stack, &flood_token).await {
            Ok(stream) => flooders.push(flood(
                stream,
                format!("mic-{i}"),
                i % 2 == 1,
                stop.clone(),
                Arc::clone(&sent),
            )),
            Err(status) => refused.push(status),
        }
    }
    assert_eq!(
        flooders.len(),
        FLOOD_STREAMS as usize,
        "refused: {refused:?}"
    );
    assert_eq!(refused.len(), 2);
    for status in &refused {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("streams open"),
            "the refusal says why: {status:?}"
        );
    }

    let flooded = ack_latencies(&calm_tx, &mut calm_acks, 120, 100).await;
    stop.cancel();
    for flooder in flooders {
        tokio::time::timeout(Duration::from_secs(30), flooder)
            .await
            .expect("a flooding stream stops within 30 s")
            .expect("flooder task");
    }
    let flood_seconds = flood_started.elapsed().as_secs_f64();
    drop(calm_tx);
    let end = tokio::time::timeout(Duration::from_secs(30), calm_acks.next())
        .await
        .expect("the calm stream ends within 30 s");
    assert!(
        end.is_none(),
        "the calm stream ends cleanly, not reset: {end:?}"
    );

    // The flooder got its share and no more: at most its rate over the flood plus its burst.
    let stored: i64 = stack
        .db()
        .await
        .query_one("SELECT count(*) FROM frames WHERE device_id = 'flood'", &[])
        .await
        .expect("count")
        .get(0);
    let rate = f64::from(FLOOD_FRAMES_PER_SECOND);
    let cap = rate * flood_seconds + rate + 1.0;
    let (alone_p50, alone_p99) = (percentile(&alone, 0.5), percentile(&alone, 0.99));
    let (flooded_p50, flooded_p99) = (percentile(&flooded, 0.5), percentile(&flooded, 0.99));
    println!(
        "calm device alone: ack p50 {alone_p50:.1} ms, p99 {alone_p99:.1} ms; while another device floods \
         ({} frames offered, {stored} stored in {flood_seconds:.1} s, at most {cap:.0} allowed): p50 \
         {flooded_p50:.1} ms, p99 {flooded_p99:.1} ms ({:.2}×)",
        sent.load(Ordering::Relaxed),
        flooded_p99 / alone_p99
    );
    assert!(
        (stored as f64) <= cap,
        "the flooding device stored {stored} frames in {flood_seconds:.1} s, beyond its rate ({cap:.0})"
    );
    assert!(
        stored as f64 >= rate * flood_seconds / 4.0,
        "the flooding device was starved: {stored} frames in {flood_seconds:.1} s"
    );
    let metrics = stack.metrics();
    assert!(
        metric(
            &metrics,
            "auscult_ingest_streams_refused_total{reason=\"device_streams\"}"
        ) >= Some(2.0),
        "refused streams are counted:\n{metrics}"
    );
    assert!(
        flooded_p99 <= LATENCY_FACTOR * alone_p99,
        "the calm device's ack p99 went from {alone_p99:.1} ms to {flooded_p99:.1} ms under another \
         device's flood (more than {LATENCY_FACTOR}×)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_beyond_the_cap_are_closed_on_arrival() {
    use tokio::io::AsyncReadExt;
    let stack = Stack::start(&[("AUSCULT__FLOW__MAX_CONNECTIONS", "3")]).await;
    let address = format!("127.0.0.1:{}", stack.grpc_port);
    let open_connections = || async {
        metric(&stack.metrics(), "auscult_ingest_connections_open").unwrap_or_default()
    };
    // The readiness probe's own connection may still be closing: wait until none is open.
    let idle = auscult_testkit::wait_for(Duration::from_secs(20), || async {
        (open_connections().await == 0.0).then_some(())
    })
    .await;
    assert!(
        idle.is_some(),
        "connections still open:\n{}",
        stack.metrics()
    );

    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            tokio::net::TcpStream::connect(&address)
                .await
                .expect("connect"),
        );
    }
    let all_held = auscult_testkit::wait_for(Duration::from_secs(20), || async {
        (open_connections().await == 3.0).then_some(())
    })
    .await;
    assert!(
        all_held.is_some(),
        "three connections held:\n{}",
        stack.metrics()
    );

    let mut extra = tokio::net::TcpStream::connect(&address)
        .await
        .expect("the kernel accepts the TCP handshake");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(20), extra.read(&mut buf))
        .await
        .expect("the extra connection is closed within 20 s");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the extra connection is closed, not served: {read:?}"
    );
    assert!(
        metric(&stack.metrics(), "auscult_ingest_connections_refused_total") >= Some(1.0),
        "the refusal is counted"
    );

    // A place that frees up is taken by the next gateway.
    held.pop();
    let freed = auscult_testkit::wait_for(Duration::from_secs(20), || async {
        (open_connections().await == 2.0).then_some(())
    })
    .await;
    assert!(freed.is_some(), "a closed connection frees its place");
    stack.wait_serving().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn revoking_a_token_ends_its_open_streams_and_no_others() {
    let stack = Stack::start(&[("AUSCULT__AUTH__RECHECK_INTERVAL", "1s")]).await;
    let revoked_token = stack.add_device("gw-revoked").await;
    let kept_token = stack.add_device("gw-kept").await;
    let samples = samples();

    let (revoked_tx, mut revoked_acks) = open(&stack, &revoked_token).await.expect("open");
    let (kept_tx, mut kept_acks) = open(&stack, &kept_token).await.expect("open");
    for (tx, acks, device) in [
        (&revoked_tx, &mut revoked_acks, "gw-revoked"),
        (&kept_tx, &mut kept_acks, "gw-kept"),
    ] {
        tx.send(frame(device, "mic-0", 0, &samples))
            .await
            .expect("send");
        let ack = tokio::time::timeout(Duration::from_secs(30), acks.next())
            .await
            .expect("ack within 30 s");
        assert!(matches!(ack, Some(Ok(_))), "{device}: {ack:?}");
    }

    let revoked_at = Instant::now();
    let count = auscult_store::revoke_tokens(&stack.db().await, "gw-revoked")
        .await
        .expect("revoke");
    assert_eq!(count, 1);
    // The open stream ends with UNAUTHENTICATED within a few recheck intervals.
    let end = tokio::time::timeout(Duration::from_secs(20), revoked_acks.next())
        .await
        .expect("the revoked token's stream ends within 20 s");
    match end {
        Some(Err(status)) => {
            assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
            assert!(status.message().contains("revoked"), "{status:?}");
        }
        other => panic!("the revoked token's stream should end UNAUTHENTICATED, not {other:?}"),
    }
    println!("stream ended {:?} after revocation", revoked_at.elapsed());
    // A new stream with it is refused; the other device streams on.
    let again = open(&stack, &revoked_token).await;
    assert_eq!(
        again.map(|_| ()).expect_err("refused").code(),
        Code::Unauthenticated
    );
    kept_tx
        .send(frame("gw-kept", "mic-0", 1, &samples))
        .await
        .expect("the other device's stream is open");
    let ack = tokio::time::timeout(Duration::from_secs(30), kept_acks.next())
        .await
        .expect("ack within 30 s");
    assert!(
        matches!(&ack, Some(Ok(a)) if a.durable.iter().any(|r| r.last_seq == 1)),
        "{ack:?}"
    );
    assert!(
        metric(&stack.metrics(), "auscult_ingest_streams_revoked_total") >= Some(1.0),
        "the revoked stream is counted"
    );
}
